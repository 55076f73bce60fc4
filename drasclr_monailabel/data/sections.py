"""Test cases cut from a real CT: partial slabs and upper-abdomen sections with bowel gas.

A full chest CT with reference structures (LIDC-IDRI-0001 in the sample data) gives the harder
cases that users' scans present, with a known answer:

- :func:`cut_slab`: the slices between two heights, as a scanner that covered only part of the
  lungs would have written them (apex-only, base-only, upper abdomen with the lung bases);
- :func:`add_bowel_gas`: the stomach and colon filled with gas as they often are (a gas cap over
  an air-fluid level in the stomach, gas mixed with stool in the colon), so a lung mask must tell
  gas below the diaphragm from lung.

Arrays are (Z, Y, X) on the volume's canonical LPS grid (``CTVolume.canonical``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from drasclr_monailabel.io.volume import CTVolume

GAS_HU = -1000.0
GAS_NOISE_HU = 15.0
STOOL_GRAIN_MM = 4.0
# The gas fills the lumen: the wall of a distended stomach or colon (1-3 mm) stays tissue.
WALL_MM = 2.0


def cut_slab(volume: CTVolume, z_low_mm: float, z_high_mm: float, source: str | None = None) -> CTVolume:
    """The canonical volume's slices whose world z (mm, LPS: superior is larger) is in [low, high].

    Raises:
        ValueError: no slice lies in the range.
    """
    ct = volume.canonical()
    z = ct.origin[2] + ct.spacing[2] * np.arange(ct.hu.shape[0])
    keep = np.flatnonzero((z >= z_low_mm) & (z <= z_high_mm))
    if keep.size == 0:
        raise ValueError(f"no slice between z {z_low_mm} and {z_high_mm} mm")
    origin = (ct.origin[0], ct.origin[1], float(z[keep[0]]))
    return replace(ct, hu=ct.hu[keep[0]:keep[-1] + 1].copy(), origin=origin, source=source or ct.source)


def add_bowel_gas(volume: CTVolume, stomach: np.ndarray, colon: np.ndarray, stomach_gas_fraction: float = 0.6,
                  stool_fraction: float = 0.35, seed: int = 0) -> CTVolume:
    """Fill the stomach with a gas cap and the colon with gas mixed with stool.

    Args:
        volume: a canonical (LPS) CT; ``stomach`` and ``colon`` are bool (Z, Y, X) on its grid.
        stomach_gas_fraction: share of the stomach's lumen (the organ less a 2 mm wall) above the air-fluid level (the anterior part:
            the patient lies supine, so fluid collects posteriorly).
        stool_fraction: share of the colon that stays soft tissue, as grains of about 4 mm
            scattered through the gas (mottled stool), which lifts the median HU of the gas.

    Returns:
        A copy of ``volume`` with the gas written in (HU -1000 plus 15 HU noise).
    """
    rng = np.random.default_rng(seed)
    hu = volume.hu.astype(np.float32)
    stomach, colon = (_lumen(organ, volume.spacing) for organ in (stomach, colon))
    gas = np.zeros(hu.shape, dtype=bool)
    if stomach.any():
        ys = np.nonzero(stomach)[1]
        level = np.quantile(ys, stomach_gas_fraction)
        gas |= stomach & (np.arange(hu.shape[1])[None, :, None] <= level)
    if colon.any():
        sigma = [STOOL_GRAIN_MM / s for s in volume.spacing[::-1]]
        field = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), sigma)
        threshold = np.quantile(field[colon], stool_fraction)
        gas |= colon & (field > threshold)
    hu[gas] = GAS_HU + rng.normal(0.0, GAS_NOISE_HU, int(gas.sum()))
    return replace(volume, hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16))


def _lumen(organ: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``organ`` less a wall of WALL_MM (distance inside the organ, mm)."""
    if not organ.any():
        return organ
    return ndimage.distance_transform_edt(organ, sampling=spacing[::-1]) > WALL_MM
