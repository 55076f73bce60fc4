"""drasclr export-nnunet: sources, the dataset layout, idempotent re-runs and the refusals.

The anatomy preparation (lung mask, registration) is replaced by a fast stand-in here so that the
export's own logic is tested in seconds; tests/integration/test_nnunet_pipeline.py runs the real
preparation end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

import drasclr_monailabel.nnunet.export as export_module
from drasclr_monailabel.cli.main import main
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.nnunet.export import ExportOptions, export_dataset
from drasclr_monailabel.nnunet.lung_grid import LungGridCase
from drasclr_monailabel.nnunet.sources import (
    SourceCase,
    cases_from_datastore,
    cases_from_manifest,
)
from drasclr_monailabel.segmentation.labels import BINARY, SUBTYPES, LabelSet

FAKE_ATLAS = "fake-atlas-000000000000"


def _fake_lung_grid_case(volume: CTVolume, spacing_mm: int = 1, atlas=None, label_map=None, label_set=None) -> LungGridCase:
    """The scan's own grid, coordinates as ramps, every voxel lung: the export's bookkeeping only."""
    grid = volume.to_sitk()
    shape = volume.hu.shape
    ramps = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape[::-1]], indexing="ij"))
    coordinates = np.ascontiguousarray(ramps.transpose(0, 3, 2, 1))
    labels = None if label_map is None else (label_set or LabelSet()).to_classes(label_map)
    ones = np.ones(shape, np.uint8)
    return LungGridCase(grid=grid, hu=volume.hu, coordinates=coordinates, lungs=ones, labels=labels,
                        lungs_native=ones, atlas_id=FAKE_ATLAS)


@pytest.fixture(autouse=True)
def fast_preparation(monkeypatch):
    monkeypatch.setattr(export_module, "lung_grid_case", _fake_lung_grid_case)
    monkeypatch.setattr(export_module, "load_default_atlas", lambda: SimpleNamespace(atlas_id=FAKE_ATLAS))


def _write(path: Path, array: np.ndarray, origin=(0.0, 0.0, 0.0), spacing=(2.0, 2.0, 3.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _ct(seed: int) -> np.ndarray:
    """A small CT-like volume: air around a body of soft tissue with a low-attenuation region."""
    hu = np.full((8, 24, 24), -1000, np.int16)
    hu[:, 4:20, 4:20] = 40
    hu[:, 8:16, 8:16] = -870 + seed
    return hu


def _label(values: dict[int, tuple[slice, ...]]) -> np.ndarray:
    label = np.zeros((8, 24, 24), np.uint8)
    for value, where in values.items():
        label[where] = value
    return label


@pytest.fixture
def cohort(tmp_path) -> Path:
    """Three labelled cases (one with all three subtypes) and one unlabelled, with a manifest."""
    rows = ["id,image,label"]
    for i, values in enumerate([{1: np.s_[2:4, 9:12, 9:12]}, {2: np.s_[3:5, 10:13, 10:13], 3: np.s_[5:6, 9:10, 9:14]},
                                {1: np.s_[1:2, 8:9, 8:9]}]):
        _write(tmp_path / "in" / f"case{i}.nii.gz", _ct(i))
        _write(tmp_path / "in" / f"case{i}_label.nii.gz", _label(values))
        rows.append(f"case {i},in/case{i}.nii.gz,in/case{i}_label.nii.gz")
    _write(tmp_path / "in" / "new.nii.gz", _ct(9))
    rows.append("new,in/new.nii.gz,")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


def _export(manifest: Path, raw: Path, **options) -> export_module.ExportSummary:
    settings = {"labels": LabelSet(SUBTYPES), "coordinates": True, **options}
    return export_dataset(cases_from_manifest(manifest), raw, 501, "Emphysema", ExportOptions(**settings), str(manifest))


def test_export_writes_an_nnunet_dataset(cohort, tmp_path) -> None:
    summary = _export(cohort, tmp_path / "raw", unlabelled=True)
    folder = tmp_path / "raw" / "Dataset501_Emphysema"
    assert summary.folder == folder and (summary.training, summary.test) == (3, 1)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "noNorm", "2": "noNorm", "3": "noNorm"}
    assert dataset["labels"] == {"background": 0, "centrilobular": 1, "panlobular": 2, "paraseptal": 3}
    assert dataset["numTraining"] == 3 and dataset["drasclr"]["atlas_id"] == FAKE_ATLAS
    assert sorted(p.name for p in (folder / "imagesTr").iterdir())[:4] == [f"case_0_000{c}.nii.gz" for c in range(4)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"new_000{c}.nii.gz" for c in range(4)]
    ct = sitk.ReadImage(str(folder / "imagesTr" / "case_1_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "case_1.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16 and label.GetSpacing() == ct.GetSpacing() == (2.0, 2.0, 3.0)
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 2, 3}
    assert sitk.ReadImage(str(folder / "imagesTr" / "case_1_0002.nii.gz")).GetPixelID() == sitk.sitkFloat32


def test_binary_export_maps_every_subtype_to_one(cohort, tmp_path) -> None:
    _export(cohort, tmp_path / "raw", labels=LabelSet(BINARY), coordinates=False)
    folder = tmp_path / "raw" / "Dataset501_Emphysema"
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "emphysema": 1}
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "case_1.nii.gz"))))) == {0, 1}
    assert not list((folder / "imagesTr").glob("*_0001.nii.gz"))


def test_rerun_skips_unchanged_cases_and_follows_the_source(cohort, tmp_path) -> None:
    raw = tmp_path / "raw"
    _export(cohort, raw)
    folder = raw / "Dataset501_Emphysema"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.nii.gz")}
    again = _export(cohort, raw)
    assert again.written == [] and len(again.skipped) == 3
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.nii.gz")} == stamps
    cohort.write_text("\n".join(cohort.read_text().splitlines()[:3]) + "\n")
    shrunk = _export(cohort, raw, coordinates=False)
    assert shrunk.removed == [] and sorted(shrunk.written) == ["case_0", "case_1"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["case_0_0000.nii.gz", "case_1_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    dropped = _export(_first_rows(cohort, 1), raw, coordinates=False)
    assert dropped.removed == ["case_1"] and not (folder / "labelsTr" / "case_1.nii.gz").exists()


def _first_rows(manifest: Path, rows: int) -> Path:
    lines = manifest.read_text().splitlines()
    out = manifest.with_name("first.csv")
    out.write_text("\n".join(lines[: rows + 1]) + "\n")
    return out


def test_an_image_that_gets_a_label_moves_from_imagests_to_imagestr(cohort, tmp_path) -> None:
    raw = tmp_path / "raw"
    _export(cohort, raw, unlabelled=True)
    _write(tmp_path / "in" / "new_label.nii.gz", _label({1: np.s_[2:3, 9:10, 9:10]}))
    cohort.write_text(cohort.read_text().replace("new,in/new.nii.gz,", "new,in/new.nii.gz,in/new_label.nii.gz"))
    summary = _export(cohort, raw, unlabelled=True)
    folder = raw / "Dataset501_Emphysema"
    assert summary.written == ["new"] and (summary.training, summary.test) == (4, 0)
    assert (folder / "labelsTr" / "new.nii.gz").is_file() and not list((folder / "imagesTs").glob("new_*"))


def test_label_off_its_image_grid_is_refused_naming_the_file(cohort, tmp_path) -> None:
    _write(tmp_path / "in" / "case1_label.nii.gz", _label({1: np.s_[2:3, 9:10, 9:10]}), origin=(10.0, 0.0, 0.0))
    with pytest.raises(InputError) as caught:
        _export(cohort, tmp_path / "raw")
    assert caught.value.path.endswith("case1_label.nii.gz") and "grid" in str(caught.value)
    assert not (tmp_path / "raw" / "Dataset501_Emphysema" / "dataset.json").exists()


def test_label_values_outside_the_label_set_are_refused(cohort, tmp_path) -> None:
    _write(tmp_path / "in" / "case2_label.nii.gz", _label({7: np.s_[2:3, 9:10, 9:10]}))
    with pytest.raises(InputError, match=r"case2_label.nii.gz: label values \[7\]"):
        _export(cohort, tmp_path / "raw")


def test_foreign_cases_and_clashing_ids_are_refused(cohort, tmp_path) -> None:
    raw = tmp_path / "raw"
    (raw / "Dataset501_Other").mkdir(parents=True)
    with pytest.raises(InputError, match="already uses dataset id 501"):
        _export(cohort, raw)
    (raw / "Dataset501_Other").rmdir()
    _write(raw / "Dataset501_Emphysema" / "imagesTr" / "mine_0000.nii.gz", _ct(0))
    with pytest.raises(InputError, match="was not written by drasclr export-nnunet"):
        _export(cohort, raw)


def test_two_images_with_one_case_id_are_refused(tmp_path) -> None:
    cases = [SourceCase("a b", tmp_path / "1.nii.gz", tmp_path / "1l.nii.gz"),
             SourceCase("a_b", tmp_path / "2.nii.gz", tmp_path / "2l.nii.gz")]
    with pytest.raises(InputError, match="maps to nnU-Net case 'a_b'"):
        export_dataset(cases, tmp_path / "raw", 501, "Emphysema", ExportOptions(LabelSet()), "test")


def test_datastore_source_pairs_images_with_final_labels(tmp_path) -> None:
    studies = tmp_path / "studies"
    for name in ("b.nii.gz", "a.nrrd", ".hidden.nii.gz", "notes.txt"):
        (studies / name).parent.mkdir(parents=True, exist_ok=True)
        (studies / name).write_bytes(b"")
    (studies / "labels" / "final").mkdir(parents=True)
    (studies / "labels" / "final" / "b.nii.gz").write_bytes(b"")
    (studies / "labels" / "original").mkdir()
    (studies / "labels" / "original" / "a.nii.gz").write_bytes(b"")
    cases = cases_from_datastore(studies)
    assert [(c.image_id, c.image.name, c.label.name if c.label else None) for c in cases] == [("a", "a.nrrd", None),
                                                                                           ("b", "b.nii.gz", "b.nii.gz")]


def test_manifest_problems_name_the_file(tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,label\nx,y\n")
    with pytest.raises(InputError, match="no 'image' column"):
        cases_from_manifest(manifest)
    manifest.write_text("image,label\nmissing.nii.gz,\n")
    with pytest.raises(InputError, match=r"missing.nii.gz: does not exist \(line 2 of m.csv\)"):
        cases_from_manifest(manifest)


def test_cli_reports_a_missing_output_folder_in_one_line(cohort, monkeypatch, capsys) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["export-nnunet", "--manifest", str(cohort), "--dataset-id", "501"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]
