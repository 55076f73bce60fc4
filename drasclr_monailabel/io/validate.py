"""Checks that a read volume is a usable CT: 3D, plausible voxel size, Hounsfield units.

The lung check needs the lung mask and lives in :mod:`drasclr_monailabel.anatomy`; it raises
:class:`~drasclr_monailabel.errors.NoLungsError` with the same ``<path>: <problem>`` shape.
"""

from __future__ import annotations

import numpy as np

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume

MIN_SLICES = 3
IN_PLANE_SPACING_MM = (0.1, 5.0)
SLICE_SPACING_MM = (0.1, 20.0)
# CT puts air near -1000 HU and soft tissue near 0 to +100 HU. Requiring both catches MR, PET,
# 8-bit stacks and CT stored without its rescale intercept (air at 0, water at 1024).
AIR_HU = -900
TISSUE_HU = -100
MIN_AIR_FRACTION = 0.002
MAX_SAMPLED_VOXELS = 4_000_000


def validate_ct(volume: CTVolume) -> None:
    """Raise :class:`InputError` if ``volume`` is not a plausible 3D CT in HU."""
    source = volume.source or "<volume>"
    z, y, x = volume.hu.shape
    if min(x, y) < 2 or z < MIN_SLICES:
        raise InputError(source, f"has size {x}x{y}x{z}: fewer than {MIN_SLICES} slices is not a 3D CT volume")
    _check_spacing(source, volume.spacing)
    _check_hounsfield(source, volume.hu)


def _check_spacing(source: str, spacing: tuple[float, float, float]) -> None:
    values = np.asarray(spacing, dtype=np.float64)
    text = "x".join(f"{s:g}" for s in spacing)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(source, f"has invalid voxel spacing {text} mm")
    low, high = IN_PLANE_SPACING_MM
    if not (low <= values[0] <= high and low <= values[1] <= high):
        raise InputError(source, f"has implausible in-plane spacing {text} mm (expected {low}-{high} mm)")
    low, high = SLICE_SPACING_MM
    if not low <= values[2] <= high:
        raise InputError(source, f"has implausible slice spacing {text} mm (expected {low}-{high} mm)")


def _check_hounsfield(source: str, hu: np.ndarray) -> None:
    step = max(1, int(round((hu.size / MAX_SAMPLED_VOXELS) ** (1 / 3))))
    sample = hu[::step, ::step, ::step]
    low, high = int(sample.min()), int(sample.max())
    air_fraction = float(np.mean(sample <= AIR_HU))
    has_tissue = bool(np.any((sample >= TISSUE_HU) & (sample <= 300)))
    if air_fraction < MIN_AIR_FRACTION or not has_tissue:
        hint = ""
        raw_air = float(np.mean((sample >= 0) & (sample <= 100)))
        raw_tissue = float(np.mean((sample >= 924) & (sample <= 1174)))
        if raw_air > 0.05 and raw_tissue > 0.05:
            hint = "; if this is CT stored without its rescale intercept, subtract 1024"
        raise InputError(
            source,
            f"intensities {low}..{high} do not look like CT Hounsfield units "
            f"(no air near -1000 HU and soft tissue near 0 HU; MR or a non-CT image?){hint}",
        )
