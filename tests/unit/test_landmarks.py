"""Landmark grid: patch lung fractions, threshold raising, normalised coordinates, neighbours."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.landmarks import landmark_grid, nearest_neighbours, patch_fractions


def brute_fraction(mask: np.ndarray, centre: np.ndarray, size: int) -> float:
    low = np.clip(centre - size // 2, 0, mask.shape)
    high = np.clip(centre - size // 2 + size, 0, mask.shape)
    return mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]].sum() / size**3


def box_lungs(shape=(150, 120, 200), box=((20, 130), (25, 95), (30, 170))) -> sitk.Image:
    array = np.zeros(shape, dtype=np.uint8)
    (z0, z1), (y0, y1), (x0, x1) = box
    array[z0:z1, y0:y1, x0:x1] = 1
    image = sitk.GetImageFromArray(array)
    image.SetOrigin((-100.0, -60.0, -75.0))
    return image


def test_patch_fractions_match_brute_force_including_borders():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 60, 70)) < 0.3
    centres = np.stack([rng.integers(-20, n + 20, 300) for n in mask.shape], axis=1)
    expected = np.array([brute_fraction(mask, c, 32) for c in centres])
    np.testing.assert_allclose(patch_fractions(mask, centres, 32), expected)


def test_grid_keeps_patches_with_more_than_ten_percent_lung():
    lungs = box_lungs()
    grid = landmark_grid(lungs)
    mask = sitk.GetArrayFromImage(lungs) > 0
    fractions = np.array([brute_fraction(mask, c, 32) for c in grid.voxel])
    assert np.all(fractions > 0.1)
    np.testing.assert_allclose(grid.lung_fraction, fractions)
    assert grid.min_lung_fraction == 0.1
    steps = np.diff(np.unique(grid.voxel[:, 2]))
    assert set(steps.tolist()) == {26}
    # Every lung voxel is covered by some kept patch.
    covered = np.zeros_like(mask)
    for z, y, x in grid.voxel:
        covered[max(z - 16, 0):z + 16, max(y - 16, 0):y + 16, max(x - 16, 0):x + 16] = True
    assert covered[mask].all()


def test_threshold_is_raised_until_the_target_count():
    lungs = box_lungs()
    full = landmark_grid(lungs)
    reduced = landmark_grid(lungs, target=len(full) // 2)
    assert len(reduced) <= len(full) // 2
    assert reduced.min_lung_fraction > 0.1
    assert np.all(reduced.lung_fraction > reduced.min_lung_fraction)


def test_normalised_coordinates_span_minus_one_to_one():
    grid = landmark_grid(box_lungs())
    np.testing.assert_allclose(grid.normalised.min(axis=0), -1.0)
    np.testing.assert_allclose(grid.normalised.max(axis=0), 1.0)
    # World positions are the voxel centres of the 1 mm atlas grid.
    np.testing.assert_allclose(grid.world, np.array([-100.0, -60.0, -75.0]) + grid.voxel[:, ::-1])


def test_neighbours_are_the_two_nearest_other_landmarks():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(40, 3))
    neighbours = nearest_neighbours(points, 2)
    for i, (a, b) in enumerate(neighbours):
        distances = np.linalg.norm(points - points[i], axis=1)
        distances[i] = np.inf
        assert {a, b} == set(np.argsort(distances)[:2].tolist())
