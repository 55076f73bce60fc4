"""Centre of mass of a 3D binary mask, from its projections.

Counting the mask along axes costs three passes over it and two small arrays, where the
coordinates of every voxel (``np.nonzero``) cost three index arrays as long as the mask holds
voxels: for 8.4 M lung voxels on a 310 x 247 x 308 grid, 0.022 s against 0.177 s (median of 5,
on the 2-core EPYC).
"""

from __future__ import annotations

import numpy as np


def mask_centre(mask: np.ndarray) -> np.ndarray | None:
    """Mean voxel index (z, y, x), float, of the non-zero voxels of a (Z, Y, X) array; None when there are none."""
    mask = mask != 0
    plane = np.count_nonzero(mask, axis=0)  # (Y, X)
    total = int(plane.sum())
    if total == 0:
        return None
    profiles = (np.count_nonzero(mask, axis=(1, 2)), plane.sum(axis=1), plane.sum(axis=0))
    return np.array([float(np.dot(np.arange(len(p)), p)) / total for p in profiles])
