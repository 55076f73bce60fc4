"""Resampling between grids: a coarse working grid for speed, smooth label upsampling, 1 mm grids.

All functions take and return ``SimpleITK.Image`` geometry (spacing, origin, direction in ITK
order, LPS mm) so a mask computed on one grid can be put on any other grid through world space.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

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


def resample_labels(labels: sitk.Image, reference: sitk.Image, n_labels: int, smoothing_mm: float = 0.0) -> np.ndarray:
    """Put a label image (0 background, 1..n_labels) on ``reference``'s grid with smooth boundaries.

    Each label's indicator is linearly interpolated (optionally Gaussian-smoothed first) and a
    voxel takes the label whose interpolated value is largest and at least 0.5. Unlike nearest
    neighbour this gives smooth surfaces when a coarse mask is mapped to a fine grid, and it is
    about 40 times faster than ITK's label-Gaussian interpolator.

    Returns:
        uint8 array (Z, Y, X) of ``reference``'s size.
    """
    indicators = []
    for label in range(1, n_labels + 1):
        indicator = sitk.Cast(labels == label, sitk.sitkFloat32)
        if smoothing_mm > 0:
            indicator = sitk.SmoothingRecursiveGaussian(indicator, smoothing_mm)
        indicators.append(indicator)
    size = reference.GetSize()
    out = np.zeros(size[::-1], dtype=np.uint8)
    slab = max(1, _SLAB_VOXELS // max(1, size[0] * size[1]))
    for z0 in range(0, size[2], slab):
        part = _sub_grid(reference, z0, min(slab, size[2] - z0))
        best = None
        for label, indicator in enumerate(indicators, start=1):
            value = sitk.GetArrayFromImage(sitk.Resample(indicator, part, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            if best is None:
                best = value
                out[z0:z0 + part.GetSize()[2]][value >= 0.5] = label
            else:
                chosen = (value >= 0.5) & (value > best)
                out[z0:z0 + part.GetSize()[2]][chosen] = label
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


def _sub_grid(reference: sitk.Image, z0: int, nz: int) -> sitk.Image:
    """The slab ``[z0, z0 + nz)`` of ``reference``'s grid as an empty image with the right geometry."""
    size = reference.GetSize()
    origin = reference.TransformIndexToPhysicalPoint((0, 0, int(z0)))
    return make_grid(origin, (size[0], size[1], nz), reference.GetSpacing(), reference.GetDirection())
