"""Atlas: the shipped atlas, save/load round trip, content id, refusals, group-wise building."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import ATLAS_FORMAT, load_atlas, save_atlas
from drasclr_monailabel.anatomy.build_atlas import Subject, build_atlas
from drasclr_monailabel.anatomy.landmarks import patch_fractions
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
    assert atlas.atlas_id.startswith("phantom8-")
    assert 450 <= atlas.n_landmarks <= 620
    lungs = sitk.GetArrayFromImage(atlas.lungs)
    assert atlas.lungs.GetSpacing() == (1.0, 1.0, 1.0)
    assert set(np.unique(lungs).tolist()) == {0, 1, 2}
    litres = np.count_nonzero(lungs) / 1e6
    assert 5.0 < litres < 7.5
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
