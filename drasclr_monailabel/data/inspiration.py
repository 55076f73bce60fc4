"""Inspiration level: how much air the lungs hold when the scan is taken, which sets normal lung density.

Lung tissue keeps its mass when the lungs inflate, so a voxel's tissue share (its HU above air,
``hu + 1000``) scales with the inverse of the lung volume: a deeper breath darkens every
parenchyma voxel in proportion to its tissue, a shallower one brightens it (Kalender et al.,
Radiology 1990; Madani et al., Radiology 2010). A scan's inspiration is set here by the median HU
its normal parenchyma should have, so the cohort spans the spread seen between and within
subjects (Vikgren et al., Eur Radiol 2003: about 40 HU between healthy subjects at full
inspiration, more below it) whatever the source scan's own breath was. Vessels keep their HU
(blood does not expand); destroyed lung scales with the tissue it has left.
"""

from __future__ import annotations

import numpy as np

from drasclr_monailabel.data.lung_layout import parenchyma_weight, smooth_hu

AIR_HU = -1000.0
# Normal parenchyma, for the median: well inside the lung (vessel weight 1) and not labelled.
MIN_WEIGHT = 0.99


def set_inspiration(hu: np.ndarray, lungs: np.ndarray, label: np.ndarray, spacing_zyx: tuple[float, float, float],
                    median_hu: float) -> tuple[np.ndarray, float]:
    """Rescale lung parenchyma so that the median HU of its normal (unlabelled) part is ``median_hu``.

    Args:
        hu: float (Z, Y, X) HU with lesions, before scanner effects.
        lungs: (Z, Y, X) lung mask (non-zero = lung).
        label: (Z, Y, X) emphysema labels (non-zero voxels are not normal lung).
        spacing_zyx: voxel size in mm, array order (for the vessel smoothing).
        median_hu: wanted median HU of normal parenchyma (e.g. -880 at a deep breath, -820 at a
            shallow one).

    Returns:
        float32 HU, and the factor applied to the tissue share (below 1: deeper inspiration than
        the source, above 1: shallower).
    """
    inside = lungs > 0
    out = hu.astype(np.float32, copy=True)
    if not inside.any():
        return out, 1.0
    box = _box(inside)
    region = out[box]
    smooth = smooth_hu(region, np.asarray(spacing_zyx, dtype=np.float64))
    weight = parenchyma_weight(smooth, inside[box])
    normal = (weight >= MIN_WEIGHT) & (label[box] == 0)
    if not normal.any():
        return out, 1.0
    # The smoothed tissue share is scaled: lung structure follows the breath, the source's own
    # quantum noise (voxel to voxel) does not.
    tissue = np.maximum(smooth - AIR_HU, 0.0)
    factor = float(max(median_hu - AIR_HU, 1.0) / max(float(np.median(tissue[normal])), 1.0))
    region += weight * (factor - 1.0) * tissue
    return out, factor


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask."""
    found = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(found.min(axis=0), found.max(axis=0)))
