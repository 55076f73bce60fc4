"""Atlas: the shipped atlas, save/load round trip, content id, refusals, group-wise building."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import ATLAS_FORMAT, load_atlas, save_atlas
from drasclr_monailabel.anatomy.build_atlas import Subject, build_atlas
from drasclr_monailabel.anatomy.landmarks import patch_fractions
from drasclr_monailabel.anatomy.lobes import lungs_from_lobes
from drasclr_monailabel.cli.main import main
from drasclr_monailabel.data.phantom import make_thorax_phantom
from drasclr_monailabel.errors import InputError


def box_atlas_lungs() -> sitk.Image:
    array = np.zeros((120, 100, 160), dtype=np.uint8)
    array[20:100, 20:80, 20:75] = 1
    array[20:100, 20:80, 85:140] = 2
    image = sitk.GetImageFromArray(array)
    image.SetOrigin((-80.0, -50.0, -60.0))
    return image


def test_shipped_atlas_is_consistent(default_atlas):
    atlas = default_atlas
    assert atlas.meta["format"] == ATLAS_FORMAT
    assert atlas.atlas_id.startswith("realct3-")  # built from three real chest CTs (docs/anatomy.md)
    assert 300 <= atlas.n_landmarks <= 620
    lungs = sitk.GetArrayFromImage(atlas.lungs)
    assert atlas.lungs.GetSpacing() == (1.0, 1.0, 1.0)
    assert set(np.unique(lungs).tolist()) == {0, 1, 2}
    litres = np.count_nonzero(lungs) / 1e6
    assert 3.0 < litres < 7.5
    fractions = patch_fractions(lungs > 0, atlas.landmarks.voxel, 32)
    np.testing.assert_allclose(fractions, atlas.landmarks.lung_fraction, atol=1e-6)
    assert np.all(fractions > atlas.landmarks.min_lung_fraction)
    assert np.all(np.abs(atlas.landmarks.normalised) <= 1.0 + 1e-6)
    neighbours = atlas.landmarks.neighbours
    assert neighbours.shape == (atlas.n_landmarks, 2)
    assert not np.any(neighbours == np.arange(atlas.n_landmarks)[:, None])
    # The right lung (label 1) lies at lower world x (LPS).
    xs = np.nonzero(lungs)[2]
    labels = lungs[np.nonzero(lungs)]
    assert xs[labels == 1].mean() < xs[labels == 2].mean()


def test_shipped_atlas_carries_lobes_that_agree_with_the_lungs(default_atlas):
    lungs = sitk.GetArrayFromImage(default_atlas.lungs)
    lobes = sitk.GetArrayFromImage(default_atlas.lobes)
    assert default_atlas.lobes.GetSize() == default_atlas.lungs.GetSize()
    np.testing.assert_array_equal(lungs_from_lobes(lobes), lungs)  # every lung voxel has a lobe of its side
    assert set(np.unique(lobes).tolist()) == {0, 1, 2, 3, 4, 5}
    # Anatomy: upper lobes above lower lobes, the middle lobe anterior (LPS: y grows posteriorly).
    centre = {code: np.argwhere(lobes == code).mean(axis=0) for code in range(1, 6)}  # (z, y, x)
    assert centre[1][0] > centre[3][0] and centre[4][0] > centre[5][0]
    assert centre[2][1] < centre[3][1]


def _agreement(shipped, rebuilt) -> tuple[list[float], int, int]:
    """Per-side lung Dice on the shipped grid (world space, nearest neighbour) and the landmarks
    that are in one atlas but not within 2 mm of a landmark of the other (counts both ways; landmarks
    lie 26 mm apart, and the grid follows the lungs' box, which may move by a voxel)."""
    moved = sitk.Resample(rebuilt.lungs, shipped.lungs, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    first, second = sitk.GetArrayFromImage(shipped.lungs), sitk.GetArrayFromImage(moved)
    dice = [2 * np.sum((first == s) & (second == s)) / (np.sum(first == s) + np.sum(second == s)) for s in (1, 2)]
    world = [np.array([a.lungs.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in a.landmarks.voxel])
             for a in (shipped, rebuilt)]
    distance = np.linalg.norm(world[0][:, None] - world[1][None], axis=2)
    return dice, int(np.sum(distance.min(axis=1) > 2.0)), int(np.sum(distance.min(axis=0) > 2.0))


@pytest.mark.slow
def test_shipped_atlas_is_what_build_atlas_makes_from_the_sample_data(sample_files, tmp_path, default_atlas):
    """The rebuild is bit-identical (same id) only with the BLAS kernel that built it: the
    registration's floating point follows the CPU (OPENBLAS_CORETYPE Haswell against Sandybridge
    changes the id; docs/anatomy.md). Across kernels the lungs and landmarks agree within what was
    measured between kernels (Dice at least 0.996 per side; 1 and 8 of 363 landmarks at lung edges
    in or out, the grid moved by 1 mm)."""
    assert main(["build-atlas", "--sample-data", "--out", str(tmp_path / "atlas"), "--no-progress"]) == 0
    dice, only_shipped, only_rebuilt = _agreement(default_atlas, load_atlas(tmp_path / "atlas"))
    assert min(dice) >= 0.99, dice
    assert only_shipped + only_rebuilt <= 0.04 * default_atlas.n_landmarks, (only_shipped, only_rebuilt)


def test_lobes_round_trip_and_count_in_the_id(tmp_path):
    lungs = box_atlas_lungs()
    array = sitk.GetArrayFromImage(lungs)
    lobes_array = np.where(array == 1, 1, np.where(array == 2, 4, 0)).astype(np.uint8)
    lobes_array[:60][array[:60] == 1] = 3
    lobes = sitk.GetImageFromArray(lobes_array)
    lobes.CopyInformation(lungs)
    with_lobes = save_atlas(tmp_path / "a", lungs, "box", lobes=lobes)
    without = save_atlas(tmp_path / "b", lungs, "box")
    assert with_lobes.atlas_id != without.atlas_id
    loaded = load_atlas(tmp_path / "a")
    assert loaded.atlas_id == with_lobes.atlas_id
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded.lobes), lobes_array)
    assert load_atlas(tmp_path / "b").lobes is None


def test_save_and_load_round_trip(tmp_path):
    saved = save_atlas(tmp_path / "atlas", box_atlas_lungs(), "box", {"note": "test"})
    loaded = load_atlas(tmp_path / "atlas")
    assert loaded.atlas_id == saved.atlas_id and loaded.atlas_id.startswith("box-")
    np.testing.assert_array_equal(loaded.landmarks.voxel, saved.landmarks.voxel)
    np.testing.assert_array_equal(loaded.landmarks.neighbours, saved.landmarks.neighbours)
    np.testing.assert_allclose(loaded.landmarks.normalised, saved.landmarks.normalised, atol=1e-5)
    assert loaded.meta["provenance"] == {"note": "test"}
    assert json.loads((tmp_path / "atlas" / "atlas.json").read_text())["n_landmarks"] == loaded.n_landmarks


def test_id_changes_with_content(tmp_path):
    first = save_atlas(tmp_path / "a", box_atlas_lungs(), "box")
    changed = box_atlas_lungs()
    changed[5, 5, 5] = 1  # a background voxel becomes lung
    second = save_atlas(tmp_path / "b", changed, "box")
    again = save_atlas(tmp_path / "c", box_atlas_lungs(), "box")
    assert first.atlas_id != second.atlas_id
    assert first.atlas_id == again.atlas_id


def test_edited_or_foreign_folders_are_refused(tmp_path):
    folder = tmp_path / "atlas"
    save_atlas(folder, box_atlas_lungs(), "box")
    table = folder / "landmarks.csv"
    table.write_text(table.read_text().replace(",0.", ",0.5", 1))
    with pytest.raises(InputError, match="does not match the atlas files"):
        load_atlas(folder)
    meta = json.loads((folder / "atlas.json").read_text())
    (folder / "atlas.json").write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(InputError, match="format 'other/9'"):
        load_atlas(folder)
    with pytest.raises(InputError, match="no atlas.json"):
        load_atlas(tmp_path)


@pytest.mark.slow
def test_group_wise_build_averages_subjects(tmp_path):
    subjects = []
    for seed in (4, 5):
        case = make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=seed, noise_hu=0.0)
        labels = sitk.GetImageFromArray(case.lungs)
        labels.SetSpacing(case.volume.spacing)
        labels.SetOrigin(case.volume.origin)
        subjects.append(Subject(name=f"seed{seed}", labels=labels))
    atlas = build_atlas(subjects, tmp_path / "built", "pair", progress=False)
    assert load_atlas(tmp_path / "built").atlas_id == atlas.atlas_id
    volumes = [np.count_nonzero(sitk.GetArrayViewFromImage(s.labels)) * 27e-6 for s in subjects]
    litres = np.count_nonzero(sitk.GetArrayViewFromImage(atlas.lungs)) * 1e-6
    assert 0.85 * min(volumes) < litres < 1.15 * max(volumes)
    assert all(s["dice_to_template"] > 0.9 for s in atlas.meta["provenance"]["subjects"])
    assert atlas.n_landmarks > 300


@pytest.mark.parametrize("argv", [["build-atlas", "--out", "x"], ["build-atlas", "scans/", "--phantom", "--out", "x"],
                                  ["build-atlas", "/does/not/exist", "--out", "x"]])
def test_build_atlas_usage_errors(argv, tmp_path, capsys):
    argv = [a if a != "x" else str(tmp_path / "out") for a in argv]
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_a_full_chest_ct_held_out_of_the_atlas_registers(sample_files, tmp_path):
    """An atlas built like the shipped one from lung1 and lung2 only, and LIDC-IDRI-0001 (not in it) registered to it.

    Issue 15 asks for lung Dice 0.85 (affine): mutual information alone reached 0.848, the overlap
    refinement 0.853 (docs/anatomy.md).
    """
    from drasclr_monailabel.anatomy.build_atlas import cohort_subjects, sample_entries
    from drasclr_monailabel.anatomy.pipeline import preprocess_volume
    from drasclr_monailabel.io import read_ct

    entries = [e for e in sample_entries() if e.scan_id != "lidc0001"]
    atlas = build_atlas(list(cohort_subjects(entries)), tmp_path / "atlas", "held-out", progress=False)
    scan = preprocess_volume(read_ct(sample_files["lidc0001_image"]), atlas)
    assert scan.registration.dice >= 0.85
    assert scan.valid.mean() >= 0.9
    assert np.mean(patch_fractions(scan.lungs > 0, scan.landmarks[scan.valid]) > 0.1) >= 0.93


def test_build_from_sample_data_never_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path / "empty-cache"))
    assert main(["build-atlas", "--sample-data", "--out", str(tmp_path / "atlas")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "drasclr sample-data --only lidc0001_image" in err
    assert not (tmp_path / "empty-cache").exists()
