"""Resampling between grids: a coarse working grid for speed, smooth label upsampling, 1 mm grids.

All functions take and return ``SimpleITK.Image`` geometry (spacing, origin, direction in ITK
order, LPS mm) so a mask computed on one grid can be put on any other grid through world space.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Output slabs of at most this many voxels keep the float buffers of label upsampling small
# (a 512 x 512 x 400 scan would otherwise need two 400 MB float images).
_SLAB_VOXELS = 8_000_000


def shrink_factors(spacing: Sequence[float], target_mm: float) -> list[int]:
    """Integer block sizes (x, y, z) that bring each axis to about ``target_mm`` (never finer).

    Rounding leans upwards (1.5 mm becomes 3 mm, not 1.5 mm) because the cost of the
    morphology grows with the cube of the resolution while the mask changes little.
    """
    return [max(1, int(np.ceil(target_mm / s - 0.25))) for s in spacing]


def shrink_to_working_grid(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Block-average ``image`` to about ``target_mm`` voxels (averaging also lowers the noise)."""
    factors = shrink_factors(image.GetSpacing(), target_mm)
    if factors == [1, 1, 1]:
        return image
    return sitk.BinShrink(image, factors)


def resample_labels(labels: sitk.Image, reference: sitk.Image, n_labels: int, smoothing_mm: float = 0.0,
                    transform: sitk.Transform | None = None) -> np.ndarray:
    """Put a label image (0 background, 1..n_labels) on ``reference``'s grid with smooth boundaries.

    Each label's indicator is linearly interpolated (optionally Gaussian-smoothed first) and a
    voxel takes the label whose interpolated value is largest and at least 0.5. Unlike nearest
    neighbour this gives smooth surfaces when a coarse mask is mapped to a fine grid, and it is
    about 40 times faster than ITK's label-Gaussian interpolator. Only the part of the reference
    grid around the labels is computed, in slabs that keep the float buffers small.
    ``transform`` (reference point -> labels point, identity if None) warps the labels on the way.

    Returns:
        uint8 array (Z, Y, X) of ``reference``'s size.
    """
    transform = transform or sitk.Transform()
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    box = _label_box(labels, reference, transform, margin_mm=3.0 * smoothing_mm + max(labels.GetSpacing()))
    if box is None:
        return out
    indicators = []
    for label in range(1, n_labels + 1):
        indicator = sitk.Cast(labels == label, sitk.sitkFloat32)
        if smoothing_mm > 0:
            indicator = sitk.SmoothingRecursiveGaussian(indicator, smoothing_mm)
        indicators.append(indicator)
    low, high = box
    slab = max(1, _SLAB_VOXELS // int(np.prod(high[:2] - low[:2])))
    for z0 in range(int(low[2]), int(high[2]), slab):
        start = (int(low[0]), int(low[1]), z0)
        size = (int(high[0] - low[0]), int(high[1] - low[1]), min(slab, int(high[2]) - z0))
        part = _sub_grid(reference, start, size)
        target = out[z0:z0 + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]]
        best = np.zeros(target.shape, dtype=np.float32)
        for label, indicator in enumerate(indicators, start=1):
            value = sitk.GetArrayFromImage(sitk.Resample(indicator, part, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            chosen = (value >= 0.5) & (value > best)
            target[chosen] = label
            np.maximum(best, value, out=best)
    return out


def resample_nearest(image: sitk.Image, reference: sitk.Image, default: float = 0.0) -> sitk.Image:
    """Nearest-neighbour resampling (for masks) onto ``reference``'s grid."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, default, image.GetPixelID())


def make_grid(origin: Sequence[float], size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
              direction: Sequence[float] | None = None, pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """An empty image that only carries a grid (origin and spacing in mm, size (x, y, z))."""
    image = sitk.Image([int(s) for s in size], pixel)
    image.SetOrigin([float(o) for o in origin])
    image.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    return image


def array_to_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """Wrap a (Z, Y, X) array with the geometry of ``like`` (same size)."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel of ``image`` in millilitres."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def world_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box (min corner, max corner; x, y, z mm) covered by the voxel centres."""
    size = np.array(image.GetSize())
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[0, n - 1] for n in size])).reshape(3, -1).T]
    points = np.array(corners)
    return points.min(axis=0), points.max(axis=0)


def _sub_grid(reference: sitk.Image, start: Sequence[int], size: Sequence[int]) -> sitk.Image:
    """The box of ``reference``'s grid at index ``start`` (x, y, z) with ``size`` voxels, as an empty image."""
    origin = reference.TransformIndexToPhysicalPoint([int(v) for v in start])
    return make_grid(origin, size, reference.GetSpacing(), reference.GetDirection())


def _label_box(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
               margin_mm: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Index range [low, high) (x, y, z) of the reference voxels that can receive a label, or None."""
    array = sitk.GetArrayViewFromImage(labels)
    present = [np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not present[0].size:
        return None
    margin = margin_mm / np.array(labels.GetSpacing())
    ranges = [(p[0] - m, p[-1] + m) for p, m in zip(present[::-1], margin)]
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    inverse = transform.GetInverse()
    points = [inverse.TransformPoint(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])) for c in corners]
    index = np.array([reference.TransformPhysicalPointToContinuousIndex(p) for p in points])
    low = np.clip(np.floor(index.min(axis=0)), 0, reference.GetSize()).astype(int)
    high = np.clip(np.ceil(index.max(axis=0)) + 1, 0, reference.GetSize()).astype(int)
    if np.any(high <= low):
        return None
    return low, high
