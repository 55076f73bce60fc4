"""Where emphysema goes inside a lung mask: secondary lobules, zones, pleura, vessels, patchiness.

Everything works on a voxel grid in array order (Z, Y, X) with the spacing in mm in the same
order, and with array z pointing superior (the caller reorients to LPS first). Positions are in
mm from voxel [0, 0, 0], so shapes stay round on anisotropic grids (0.6 x 0.6 x 5 mm CT).

Secondary pulmonary lobules are 10-25 mm polyhedra; a jittered lattice of centres (one per lobule)
and its Voronoi cells stand in for them: centrilobular holes sit at the centres, panlobular
destruction fills whole cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from drasclr_monailabel.data.airways import spared_structures

# HU of a voxel at which vessel sparing is complete / starts (lung-window edge of small vessels).
VESSEL_FULL_HU = -550.0
VESSEL_START_HU = -750.0
VESSEL_SMOOTH_MM = 0.6
# Lattice jitter as a fraction of the lobule spacing (keeps cells convex and of similar size).
LATTICE_JITTER = 0.3
PATCH_SCALE_MM = 30.0
PATCH_STEP_MM = 5.0


@dataclass(frozen=True)
class LungLayout:
    """Per-voxel and per-lobule facts that the lesion painters share.

    Attributes:
        spacing: voxel size (z, y, x) in mm.
        lungs: bool (Z, Y, X) lung mask.
        parenchyma: float32 (Z, Y, X) in [0, 1]: 1 in lung parenchyma, 0 in vessels, in normal
            low-attenuation structures (airway lumens, lung next to the trachea and main bronchi,
            :mod:`~drasclr_monailabel.data.airways`) and outside the lungs (partial at vessel
            edges), so that lesions spare them and they are never labelled.
        height: float32 (Z,) relative cranio-caudal position of each slice in the lungs: 0 at the
            lowest lung slice, 1 at the highest.
        patchiness: smooth positive random field with mean about 1 on a coarse grid (step
            ``patch_step_mm``); emphysema is clustered, not uniformly spread.
        patch_step_mm: grid step of ``patchiness`` in mm.
        centres: (N, 3) lobule centres in mm (z, y, x) that lie in parenchyma.
        tree: KD-tree of ``centres``.
    """

    spacing: np.ndarray
    lungs: np.ndarray
    parenchyma: np.ndarray
    height: np.ndarray
    patchiness: np.ndarray
    patch_step_mm: float
    centres: np.ndarray
    tree: cKDTree

    def voxel_of(self, points_mm: np.ndarray) -> np.ndarray:
        """Nearest voxel indices (N, 3) of points in mm, clipped to the grid."""
        index = np.rint(points_mm / self.spacing).astype(np.int64)
        return np.clip(index, 0, np.array(self.lungs.shape) - 1)

    def weights_at(self, points_mm: np.ndarray, zone_slope: float) -> np.ndarray:
        """Placement weight of points: ``exp(zone_slope * (height - 0.5)) * patchiness``.

        A positive ``zone_slope`` favours the upper zone (centrilobular, paraseptal), a negative
        one the lower zone (panlobular); 3 gives about 7 times more weight at the top than at the
        bottom of the lung.
        """
        index = self.voxel_of(points_mm)
        zone = np.exp(zone_slope * (self.height[index[:, 0]] - 0.5))
        patch = ndimage.map_coordinates(self.patchiness, (points_mm / self.patch_step_mm).T, order=1, mode="nearest")
        return zone * patch


def lung_layout(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float], lobule_mm: float,
                rng: np.random.Generator, patch_strength: float = 0.8) -> LungLayout:
    """Build the :class:`LungLayout` of one scan.

    Args:
        hu: (Z, Y, X) HU of the scan without lesions (vessels are found here).
        lungs: (Z, Y, X) lung mask (any non-zero value is lung).
        spacing_zyx: voxel size in mm, array order.
        lobule_mm: mean distance between lobule centres (10-25 mm in human lungs).
        rng: random source for the lattice jitter and the patchiness field.
        patch_strength: standard deviation of the log of the patchiness field.
    """
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    inside = lungs > 0
    smooth = smooth_hu(hu, spacing)
    parenchyma = parenchyma_weight(smooth, inside)
    parenchyma[spared_structures(smooth, inside, spacing)] = 0.0
    centres = _lattice(parenchyma, spacing, lobule_mm, rng)
    return LungLayout(
        spacing=spacing,
        lungs=inside,
        parenchyma=parenchyma,
        height=_slice_height(inside),
        patchiness=_patchiness(lungs.shape, spacing, rng, patch_strength),
        patch_step_mm=PATCH_STEP_MM,
        centres=centres,
        tree=cKDTree(centres) if len(centres) else cKDTree(np.zeros((1, 3))),
    )


def smooth_hu(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """float32 HU smoothed over ``VESSEL_SMOOTH_MM`` (noise would make single voxels look like vessel or air)."""
    return ndimage.gaussian_filter(hu.astype(np.float32), sigma=_sigma_voxels(VESSEL_SMOOTH_MM, spacing))


def parenchyma_weight(smooth: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """float32 (Z, Y, X) in [0, 1]: 1 in lung parenchyma, 0 in vessels (smoothed HU above -550) and outside ``lungs``."""
    vessel = np.clip((smooth - VESSEL_START_HU) / (VESSEL_FULL_HU - VESSEL_START_HU), 0.0, 1.0)
    return np.where(lungs, 1.0 - vessel, 0.0).astype(np.float32)


def _sigma_voxels(sigma_mm: float, spacing: np.ndarray) -> tuple[float, ...]:
    """Per-axis Gaussian sigma in voxels; axes coarser than 2 sigma are not smoothed."""
    return tuple(float(sigma_mm / s) if s < 2 * sigma_mm else 0.0 for s in spacing)


def _slice_height(inside: np.ndarray) -> np.ndarray:
    slices = np.flatnonzero(inside.any(axis=(1, 2)))
    height = np.zeros(inside.shape[0], dtype=np.float32)
    if slices.size:
        low, high = slices[0], slices[-1]
        height[:] = np.clip((np.arange(inside.shape[0]) - low) / max(high - low, 1), 0.0, 1.0)
    return height


def _lattice(parenchyma: np.ndarray, spacing: np.ndarray, lobule_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered cubic lattice of lobule centres (mm) that fall in parenchyma."""
    extent = np.array(parenchyma.shape) * spacing
    axes = [np.arange(lobule_mm / 2, e, lobule_mm) for e in extent]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid += rng.uniform(-LATTICE_JITTER, LATTICE_JITTER, size=grid.shape) * lobule_mm
    index = np.clip(np.rint(grid / spacing).astype(np.int64), 0, np.array(parenchyma.shape) - 1)
    keep = parenchyma[index[:, 0], index[:, 1], index[:, 2]] > 0.5
    return grid[keep]


def _patchiness(shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """exp of a smooth Gaussian field (correlation length ~30 mm) on a grid of step ``PATCH_STEP_MM``.

    Normalised so that its mean is about 1 (log-normal with log standard deviation ``strength``).
    """
    coarse_shape = tuple(int(np.ceil(n * s / PATCH_STEP_MM)) + 1 for n, s in zip(shape, spacing))
    field = ndimage.gaussian_filter(rng.normal(size=coarse_shape), sigma=PATCH_SCALE_MM / PATCH_STEP_MM / 2, mode="wrap")
    field *= strength / max(float(field.std()), 1e-6)
    return np.exp(field - strength**2 / 2)
