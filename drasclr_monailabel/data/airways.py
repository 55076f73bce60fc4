"""Normal low-attenuation structures in and next to the lungs, which a reader never labels as emphysema.

Two kinds, found on the scan before any lesion is painted:

- **airway lumens** inside the lung mask: air-dark voxels (smoothed HU below -950) grown in-plane
  by about a millimetre (at least one voxel) so lesions do not darken the partial-volume rim of a
  bronchus either;
- **lung next to the trachea and main bronchi**: lung within ``PERI_AIRWAY_MM`` of the central
  airways. Lung masks stop at the central airways, and the lung there is darkened by partial
  volume with the lumen and by the lung mask's own smoothing, which a threshold counts but an
  annotator does not.

The central airways are the wide air (at least ``WIDE_AIRWAY_MM`` from any wall, so a lumen at
least twice that across: trachea, main, lobar and the largest segmental bronchi; on a 2.5 mm grid
the centre of a 10 mm bronchus is only one voxel, 2.5 mm, from its wall) that rises to the lung
apices or above (the trachea runs up into the neck) and never touches the sides of the box it is
searched in: outside air around the neck and shoulders always reaches a side, and gas below the
diaphragm or air-dark lung never rises above the lungs. The work runs on a grid thinned to about
1.5 mm in-plane; distances are only needed to that precision.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -950.0
# Outside the lung mask air is looser: no parenchyma to leak into, and some scans read the tracheal
# lumen at -930 HU on some slices (LIDC-IDRI-0001 does).
CENTRAL_AIR_HU = -900.0
LUMEN_RIM_MM = 1.0
WIDE_AIRWAY_MM = 2.5
PERI_AIRWAY_MM = 10.0
CENTRAL_REACH_MM = 10.0
THIN_TO_MM = 1.5


def spared_structures(smooth_hu: np.ndarray, lungs: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Lung voxels that are airway lumen or lie next to the trachea and main bronchi.

    Args:
        smooth_hu: float (Z, Y, X) HU of the scan without lesions, lightly smoothed (noise would
            make single parenchyma voxels look like air); array z points superior.
        lungs: bool (Z, Y, X) lung mask.
        spacing: voxel size (z, y, x) in mm.

    Returns:
        bool (Z, Y, X), True only inside ``lungs``.
    """
    if not lungs.any():
        return lungs.copy()
    air = np.where(lungs, smooth_hu < AIR_HU, smooth_hu < CENTRAL_AIR_HU)
    rim = [0] + [max(1, int(round(LUMEN_RIM_MM / s))) for s in spacing[1:]]
    lumens = ndimage.binary_dilation(air & lungs, structure=_box(np.array(rim)))
    apex = int(np.flatnonzero(lungs.any(axis=(1, 2)))[-1])
    return lungs & (lumens | _near_central_airways(air, lungs, apex, spacing))


def _near_central_airways(air: np.ndarray, lungs: np.ndarray, apex: int, spacing: np.ndarray) -> np.ndarray:
    """Voxels within ``PERI_AIRWAY_MM`` of the central airways' lumen (bool, full grid); ``apex``: top lung slice.

    The lumen is the air within ``WIDE_AIRWAY_MM`` of the central core (its wall, for a straight
    tube) plus the air outside the lungs within ``CENTRAL_REACH_MM`` of it, where the core stops
    short of the wall (the carina, a bronchus narrowing on a few slices).
    """
    step = np.array([1] + [max(1, int(round(THIN_TO_MM / s))) for s in spacing[1:]])
    thin_spacing = spacing * step
    thin = (slice(None, None, step[0]), slice(None, None, step[1]), slice(None, None, step[2]))
    thin_air = air[thin]
    core = ndimage.distance_transform_edt(thin_air, sampling=thin_spacing) >= WIDE_AIRWAY_MM
    central = _rising_to(core, apex)
    if not central.any():
        return np.zeros(air.shape, dtype=bool)
    from_core = ndimage.distance_transform_edt(~central, sampling=thin_spacing)
    lumen = central | (thin_air & (from_core <= WIDE_AIRWAY_MM)) | (thin_air & ~lungs[thin] & (from_core <= CENTRAL_REACH_MM))
    near = ndimage.distance_transform_edt(~lumen, sampling=thin_spacing) <= PERI_AIRWAY_MM
    index = [np.minimum(np.arange(n) // k, m - 1) for n, k, m in zip(air.shape, step, near.shape)]
    return near[np.ix_(*index)]


def _rising_to(core: np.ndarray, apex: int) -> np.ndarray:
    """Components of ``core`` that reach slice ``apex`` or above and no in-plane side of the box.

    Components join diagonally too: the thin core of an oblique bronchus on a coarse grid often
    touches the trachea's only at a corner.
    """
    labels, count = ndimage.label(core, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return core
    top = set(np.unique(labels[apex:])) - {0}
    sides = set(np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                                          labels[:, :, -1].ravel()])))
    keep = sorted(top - sides)
    return np.isin(labels, keep) if keep else np.zeros(core.shape, dtype=bool)


def _box(radius: np.ndarray) -> np.ndarray:
    """Box structuring element with the given half-sizes in voxels (z, y, x)."""
    return np.ones(tuple(2 * int(r) + 1 for r in radius), dtype=bool)
