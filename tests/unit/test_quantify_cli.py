"""``drasclr quantify``: outputs, label-map geometry checks and exit codes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.cli.main import main
from drasclr_monailabel.emphysema import quantify

RIGHT_LOWER = 3


def _save(array: np.ndarray, volume, path, spacing=None) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def scan_files(lung_case, tmp_path):
    """The controlled phantom with one low-HU sphere, written as CT, lung mask and emphysema mask."""
    sphere = lung_case.sphere(lung_case.deepest_voxel(RIGHT_LOWER), 8.0)
    lung_case.insert(sphere)
    volume = lung_case.volume
    return {
        "case": lung_case,
        "sphere": sphere,
        "scan": _save(volume.hu, volume, tmp_path / "chest.nii.gz"),
        "lungs": _save(lung_case.lungs, volume, tmp_path / "lungs.nii.gz"),
        "mask": _save(sphere.astype(np.uint8) * 2, volume, tmp_path / "mask.nrrd"),
        "out": tmp_path / "out",
    }


def test_writes_json_csv_png_that_agree_with_quantify(scan_files, capsys):
    f = scan_files
    rc = main(["quantify", f["scan"], "--lungs", f["lungs"], "--mask", f["mask"], "--out", str(f["out"]), "--pseudo-labels"])
    assert rc == 0
    expected = quantify(f["case"].volume, f["case"].lungs, f["sphere"].astype(np.uint8) * 2).to_dict()
    data = json.loads((f["out"] / "chest_emphysema.json").read_text())
    assert data["regions"] == expected["regions"]
    assert data["clusters"] == expected["clusters"]
    with open(f["out"] / "chest_emphysema.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["region"] for r in rows] == list(expected["regions"])
    assert float(rows[0]["laa950_percent"]) == pytest.approx(expected["regions"]["whole"]["densitometry"]["laa950_percent"])
    assert float(rows[0]["mask_panlobular_percent"]) > 0
    png = (f["out"] / "chest_emphysema.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    labels = sitk.ReadImage(str(f["out"] / "chest_pseudo_labels.nii.gz"))
    assert labels.GetSize() == f["case"].volume.shape_xyz
    assert np.all(sitk.GetArrayFromImage(labels)[f["sphere"]] > 0)
    assert "%LAA-950" in capsys.readouterr().out


def test_label_map_in_another_axis_order_is_accepted(scan_files):
    f = scan_files
    lungs_ras = sitk.DICOMOrient(sitk.ReadImage(f["lungs"]), "RAS")
    sitk.WriteImage(lungs_ras, f["lungs"])
    assert main(["quantify", f["scan"], "--lungs", f["lungs"], "--out", str(f["out"])]) == 0
    data = json.loads((f["out"] / "chest_emphysema.json").read_text())
    assert data["regions"]["whole"]["voxels"] == int(np.count_nonzero(f["case"].lungs))


def test_mask_on_another_grid_is_refused_and_nothing_written(scan_files, tmp_path, capsys):
    f = scan_files
    volume = f["case"].volume
    bad = _save(f["sphere"][:, :, :-1].astype(np.uint8), volume, tmp_path / "bad_mask.nii.gz")
    assert main(["quantify", f["scan"], "--lungs", f["lungs"], "--mask", bad, "--out", str(f["out"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad_mask.nii.gz" in err and "size" in err
    assert not f["out"].exists()
    shifted = _save(f["sphere"].astype(np.uint8), volume, tmp_path / "spacing_mask.nii.gz",
                    spacing=(volume.spacing[0] * 1.5, volume.spacing[1], volume.spacing[2]))
    assert main(["quantify", f["scan"], "--lungs", f["lungs"], "--mask", shifted, "--out", str(f["out"])]) == 2
    assert "spacing" in capsys.readouterr().err
    assert not f["out"].exists()


@pytest.mark.parametrize("problem", ["empty", "values", "missing"])
def test_bad_lung_mask_exits_2(scan_files, tmp_path, capsys, problem):
    f = scan_files
    volume = f["case"].volume
    if problem == "empty":
        lungs = _save(np.zeros_like(f["case"].lungs), volume, tmp_path / "bad_lungs.nii.gz")
    elif problem == "values":
        lungs = _save(f["case"].lungs * 2, volume, tmp_path / "bad_lungs.nii.gz")
    else:
        lungs = str(tmp_path / "bad_lungs.nii.gz")
    assert main(["quantify", f["scan"], "--lungs", lungs, "--out", str(f["out"])]) == 2
    err = capsys.readouterr().err
    assert "bad_lungs.nii.gz" in err
    assert not f["out"].exists()


def test_bad_scan_exits_2(tmp_path, capsys):
    not_ct = tmp_path / "notes.nii.gz"
    not_ct.write_text("not an image")
    assert main(["quantify", str(not_ct), "--out", str(tmp_path / "out")]) == 2
    assert "notes.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lungs_are_segmented_when_no_mask_is_given(phantom_factory, tmp_path):
    case = phantom_factory(spacing=(3.0, 3.0, 3.0), seed=0)
    scan = _save(case.volume.hu, case.volume, tmp_path / "chest.nii.gz")
    assert main(["quantify", scan, "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "chest_emphysema.json").read_text())
    true_voxels = {"right": np.count_nonzero(case.lungs == 1), "left": np.count_nonzero(case.lungs == 2)}
    for side, voxels in true_voxels.items():
        assert data["regions"][side]["voxels"] == pytest.approx(voxels, rel=0.1)


def test_ct_without_lungs_exits_2(phantom_factory, tmp_path, capsys):
    case = phantom_factory(spacing=(3.0, 3.0, 3.0), seed=0)
    hu = case.volume.hu.copy()
    hu[(case.lungs > 0) | case.airways] = 40  # no air inside the body
    scan = _save(hu, case.volume, tmp_path / "abdomen.nii.gz")
    assert main(["quantify", scan, "--out", str(tmp_path / "out")]) == 2
    assert "no lungs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _cache_folder(case, root, grid=None):
    folder = root / "cache" / "case_001"
    folder.mkdir(parents=True)
    np.save(folder / "case_001_image.npy", case.volume.hu)
    np.save(folder / "case_001_lung.npy", case.lungs)
    volume = case.volume
    qa = {"format": CACHE_FORMAT, "id": "case_001",
          "grid": grid or {"spacing": list(volume.spacing), "origin": list(volume.origin),
                           "direction": list(volume.direction), "size": list(volume.shape_xyz)}}
    (folder / "case_001_qa.json").write_text(json.dumps(qa))
    return folder


def test_preprocessed_cache_scan_is_quantified_with_a_warning(lung_case, tmp_path):
    folder = _cache_folder(lung_case, tmp_path)
    assert main(["quantify", str(folder), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "case_001_emphysema.json").read_text())
    assert data["regions"] == quantify(lung_case.volume, lung_case.lungs).to_dict()["regions"]
    assert any("preprocessing cache" in w for w in data["warnings"])


def test_cache_scan_without_grid_exits_2(lung_case, tmp_path, capsys):
    folder = _cache_folder(lung_case, tmp_path, grid={"spacing": [1, 1]})
    assert main(["quantify", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "case_001_qa.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_writes_the_lung_mask_it_measured_on_the_ct_grid(sample_lidc, lidc_case, tmp_path):
    """Real full chest CT (stored LAS): <id>_lungs.nii.gz lies on the file's own grid, 0/1 right/2 left."""
    from drasclr_monailabel.io import read_ct

    assert main(["quantify", str(sample_lidc), "--id", "lidc", "--out", str(tmp_path)]) == 0
    written = sitk.ReadImage(str(tmp_path / "lidc_lungs.nii.gz"))
    original = read_ct(sample_lidc)
    assert written.GetSize() == original.shape_xyz
    assert written.GetDirection() == pytest.approx(original.direction) and written.GetOrigin() == pytest.approx(original.origin)
    lungs = sitk.GetArrayFromImage(written)
    assert set(np.unique(lungs).tolist()) == {0, 1, 2}
    canonical = sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS"))
    reference = lidc_case.lungs
    for side in (1, 2):
        overlap = 2.0 * np.sum((canonical == side) & (reference == side)) / (np.sum(canonical == side) + np.sum(reference == side))
        assert overlap > 0.96
    measured = json.loads((tmp_path / "lidc_emphysema.json").read_text())["regions"]["whole"]["densitometry"]["laa950_percent"]
    hu = lidc_case.volume.hu
    assert abs(measured - 100.0 * np.mean(hu[reference > 0] < -950)) <= 0.2
