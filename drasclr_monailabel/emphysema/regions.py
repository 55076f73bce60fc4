"""Reporting regions of the lungs: whole, right/left, and upper/middle/lower thirds of each lung.

Thirds are **equal-volume thirds of each lung along the cranio-caudal axis**, cut between slices:
each lung's slices are ordered from apex to base and a slice goes to the third that contains the
midpoint of its share of that lung's cumulative volume. Equal volumes give each zone the same
statistical weight (a thin apex would otherwise make a noisy upper zone), and cutting between
slices keeps each zone boundary a plane. Each lung is split on its own because the left base lies
lower than the right (heart, diaphragm) and one lung may be smaller (resection, atelectasis).

3D Slicer's Chest Imaging Platform (``CIPLabelLungRegionsImageFilter``) also uses equal-volume
thirds, but counts the voxels of both lungs together in raster order, so left and right share the
cut planes and a cut may fall inside a slice. The two definitions agree to within one slice when
the lungs have similar cranio-caudal extents.

The cranio-caudal axis is the array axis whose direction cosine is closest to world z (LPS: +z is
superior), so any scan orientation works without resampling. When the lung touches the first or
last scanned slice, the zones describe the scanned part of the lung only; :class:`LungZones` flags
this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIGHT_LUNG = 1
LEFT_LUNG = 2
SIDES = ("right", "left")
THIRDS = ("upper", "middle", "lower")

# Base zone codes: 1..3 right upper/middle/lower, 4..6 left upper/middle/lower (0 outside the lung).
N_ZONE_CODES = 7


def _zone_code(side: int, third: int) -> int:
    return 1 + 3 * side + third


REGIONS: dict[str, tuple[int, ...]] = {
    "whole": tuple(range(1, N_ZONE_CODES)),
    "right": (1, 2, 3),
    "left": (4, 5, 6),
    **{third: (_zone_code(0, t), _zone_code(1, t)) for t, third in enumerate(THIRDS)},
    **{f"{side}_{third}": (_zone_code(s, t),) for s, side in enumerate(SIDES) for t, third in enumerate(THIRDS)},
}
"""Reported region name -> the base zone codes it is made of, in report order."""

# A lung cross-section larger than this in the first/last slice means the scan cuts the lung
# (a few stray mask voxels at the edge do not).
TRUNCATION_AREA_MM2 = 50.0


@dataclass(frozen=True)
class LungZones:
    """Zone code of every voxel and whether the scan covers the whole lung.

    Attributes:
        codes: uint8 (Z, Y, X): 0 outside the lung, 1..6 = right upper, middle, lower, left upper,
            middle, lower (see :data:`REGIONS`).
        superior_axis: numpy axis of the cranio-caudal direction.
        apex_cut: the lung reaches the most superior scanned slice (apex not covered).
        base_cut: the lung reaches the most inferior scanned slice (base not covered).
    """

    codes: np.ndarray
    superior_axis: int
    apex_cut: bool
    base_cut: bool

    @property
    def partial_coverage(self) -> bool:
        return self.apex_cut or self.base_cut


def superior_axis(direction: tuple[float, ...]) -> tuple[int, int]:
    """The numpy axis closest to world superior (+z in LPS) and +1/-1 if the index runs up/down.

    ``direction`` is ITK's row-major 3x3 matrix whose column k is the world direction of ITK axis
    k; ITK axis k is numpy axis ``2 - k``.
    """
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(matrix[2])))
    return 2 - itk_axis, (1 if matrix[2, itk_axis] > 0 else -1)


def lung_zones(lungs: np.ndarray, spacing: tuple[float, float, float], direction: tuple[float, ...]) -> LungZones:
    """Assign every lung voxel to its side and equal-volume third.

    Args:
        lungs: uint8 (Z, Y, X) lung mask, 0 outside / 1 right / 2 left.
        spacing: voxel size (x, y, z) in mm, ITK order.
        direction: ITK direction cosines of the grid (row-major 3x3).
    """
    axis, step = superior_axis(direction)
    slices = np.moveaxis(lungs, axis, 0)
    n_slices = slices.shape[0]
    counts = np.stack([np.bincount(plane.ravel(), minlength=3)[1:3] for plane in slices], axis=1)  # (2, n_slices)
    apex_to_base = np.arange(n_slices)[::-1] if step > 0 else np.arange(n_slices)
    lut = np.zeros((n_slices, 3), dtype=np.uint8)  # [slice, lung label] -> zone code
    ends = np.zeros(2, dtype=np.int64)  # lung voxels in the apex-side and base-side end slices
    for side, label in enumerate((RIGHT_LUNG, LEFT_LUNG)):
        per_slice = counts[side][apex_to_base]
        total = per_slice.sum()
        if total == 0:
            continue
        midpoint = (np.cumsum(per_slice) - per_slice / 2.0) / total
        third = np.minimum((midpoint * 3).astype(np.int64), 2)
        lut[apex_to_base, label] = np.where(per_slice > 0, 1 + 3 * side + third, 0)
        ends += (per_slice[0], per_slice[-1])
    codes = np.zeros(lungs.shape, dtype=np.uint8)
    code_slices = np.moveaxis(codes, axis, 0)
    for index in np.flatnonzero(lut.any(axis=1)):
        code_slices[index] = np.take(lut[index], slices[index], mode="clip")
    other = tuple(a for a in range(3) if a != axis)
    # spacing is ITK (x, y, z) = numpy axes (2, 1, 0)
    pixel_area = float(np.prod([spacing[2 - a] for a in other]))
    apex_cut, base_cut = (bool(n * pixel_area > TRUNCATION_AREA_MM2) for n in ends)
    return LungZones(codes=codes, superior_axis=axis, apex_cut=apex_cut, base_cut=base_cut)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """The smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` voxels and
    clipped to the array (the lungs fill about a fifth of a chest CT, so work is done in this box).
    """
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]
