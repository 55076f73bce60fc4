"""Binary morphology on anisotropic CT grids: sizes are given in mm and converted per axis.

Arrays are (Z, Y, X) and ``spacing`` is ITK order (x, y, z) in mm, as everywhere in the package.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

# Connects voxels that share a face within one axial slice only (no link across slices).
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
FACE_3D = ndimage.generate_binary_structure(3, 1)


def ellipsoid(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element (Z, Y, X) approximating a ball of ``radius_mm`` on this grid.

    An axis whose voxels are larger than the radius gets extent 1 (no reach along it), so thick
    slices are never bridged by accident.
    """
    radii = [int(np.floor(radius_mm / s)) for s in spacing[::-1]]
    axes = [np.arange(-r, r + 1) * s for r, s in zip(radii, spacing[::-1])]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (zz**2 + yy**2 + xx**2) <= radius_mm**2 + 1e-6


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (2D), e.g. vessels enclosed by lung in that slice."""
    return ndimage.binary_fill_holes(mask, structure=IN_PLANE)


def largest_component(mask: np.ndarray, structure: np.ndarray = FACE_3D) -> np.ndarray:
    """The largest connected component of ``mask`` (empty if ``mask`` is empty)."""
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def distance_mm(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) from each voxel to the nearest voxel outside ``mask`` (0 outside).

    Voxels beyond the array border do not count as outside, so erosions built on this leave
    objects cut by the border (lungs at the first or last slice of a partial scan) intact.
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float64)
    if mask.all():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(mask, sampling=tuple(spacing[::-1]))


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (via a distance transform: fast for large radii)."""
    out = np.zeros_like(mask, dtype=bool)
    box = _box_around(mask, radius_mm, spacing)
    if box is not None:
        out[box] = distance_mm(~mask[box], spacing) <= radius_mm
    return out


def erode_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``."""
    return distance_mm(mask, spacing) > radius_mm


def open_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Opening by a ball: removes parts narrower than ``2 * radius_mm``."""
    return dilate_mm(erode_mm(mask, radius_mm, spacing), radius_mm, spacing) & mask


def close_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Closing by a ball: fills gaps and dents narrower than ``2 * radius_mm``."""
    out = mask.copy()
    box = _box_around(mask, radius_mm, spacing)
    if box is not None:
        out[box] |= erode_mm(dilate_mm(mask[box], radius_mm, spacing), radius_mm, spacing)
    return out


def _box_around(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``radius_mm`` plus one voxel (clipped), or None if empty.

    Morphology within this box equals morphology on the whole array, at a fraction of the cost.
    """
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found:
        return None
    margins = [int(np.ceil(radius_mm / s)) + 1 for s in spacing[::-1]]
    return tuple(slice(max(0, sl.start - m), min(n, sl.stop + m)) for sl, m, n in zip(found[0], margins, mask.shape))
