"""Centre of mass of a mask from projections: the same value as the mean of its voxel coordinates."""

from __future__ import annotations

import numpy as np

from drasclr_monailabel.utils.mask_centre import mask_centre


def test_equals_the_mean_voxel_coordinate_to_the_last_bit():
    rng = np.random.default_rng(3)
    labels = (rng.random((37, 23, 41)) < 0.2).astype(np.uint8) * rng.integers(1, 3, size=(37, 23, 41)).astype(np.uint8)
    labels[:5] = 0  # an off-centre mask
    assert np.array_equal(mask_centre(labels), np.argwhere(labels > 0).mean(axis=0))


def test_single_voxel_and_empty_mask():
    mask = np.zeros((4, 5, 6), dtype=bool)
    assert mask_centre(mask) is None
    mask[3, 1, 5] = True
    assert mask_centre(mask).tolist() == [3.0, 1.0, 5.0]
