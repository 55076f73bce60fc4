"""A fast, fully synthetic chest CT phantom with known lung masks.

The phantom is built from implicit shapes in world coordinates (LPS, mm, centred on the carina
region) and rasterised on any grid, so unit tests can use coarse grids (seconds) and the default
atlas a 1 mm grid. Anatomy that matters for the pipeline is present: outside air and a table
(which the lung mask must remove), a body wall with fat, ribs and spine, a heart that notches the
left lung, a domed diaphragm, a trachea and bronchial tree (air that the lung mask must cut away at
the hilum), and vessel trees inside the lungs (holes that the lung mask must fill).

Shapes are in mm; a random ``seed`` varies size, lung volume, position and branching so a group
of phantoms can stand in for a small cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from drasclr_monailabel.io.volume import CTVolume

AIR_HU = -1000
FAT_HU = -100
SOFT_TISSUE_HU = 40
BONE_HU = 700
PARENCHYMA_HU = -860
TABLE_HU = 150

RIGHT_LUNG = 1
LEFT_LUNG = 2


@dataclass(frozen=True)
class PhantomCase:
    """A rasterised phantom.

    Attributes:
        volume: the CT (int16 HU, LPS, spacing as requested).
        lungs: uint8 (Z, Y, X): 0 outside, 1 right lung, 2 left lung (vessels inside included).
        airways: bool (Z, Y, X): lumen of the trachea and bronchi (inside and outside the lungs).
    """

    volume: CTVolume
    lungs: np.ndarray
    airways: np.ndarray


@dataclass(frozen=True)
class _Anatomy:
    """Random but plausible sizes (mm) of one phantom subject."""

    scale: float
    body_ax: float
    body_ay: float
    lung_rx: float
    lung_ry: float
    lung_cx: float
    lung_cy: float
    apex_z: float
    base_z_right: float
    base_z_left: float
    dome_h: float
    heart_c: tuple[float, float, float]
    heart_r: tuple[float, float, float]


def make_thorax_phantom(
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.5),
    seed: int = 0,
    noise_hu: float = 15.0,
    z_range_mm: tuple[float, float] = (-140.0, 180.0),
    fov_mm: float = 400.0,
    variation: float = 1.0,
) -> PhantomCase:
    """Rasterise one thorax phantom.

    Args:
        spacing: voxel size (x, y, z) in mm.
        seed: chooses the subject's sizes, branching and noise.
        noise_hu: standard deviation of white Gaussian noise added to the HU (0 for none).
        z_range_mm: cranio-caudal range covered (world z, mm; lungs span about -110..+160).
        fov_mm: square in-plane field of view in mm.
        variation: 0 gives the mean subject, 1 the default spread of sizes.

    Returns:
        A :class:`PhantomCase` whose volume is in LPS with identity direction.
    """
    rng = np.random.default_rng(seed)
    anatomy = _sample_anatomy(rng, variation)
    sx, sy, sz = spacing
    nx = int(round(fov_mm / sx))
    ny = int(round(fov_mm / sy))
    nz = int(round((z_range_mm[1] - z_range_mm[0]) / sz))
    origin = (-fov_mm / 2 + sx / 2, -fov_mm / 2 + sy / 2, z_range_mm[0] + sz / 2)
    x = (origin[0] + sx * np.arange(nx, dtype=np.float32))[None, None, :]
    y = (origin[1] + sy * np.arange(ny, dtype=np.float32))[None, :, None]
    z = (origin[2] + sz * np.arange(nz, dtype=np.float32))[:, None, None]

    hu = np.full((nz, ny, nx), AIR_HU, dtype=np.float32)
    body = ((x / anatomy.body_ax) ** 2 + (y / anatomy.body_ay) ** 2) <= 1.0
    body = np.broadcast_to(body, hu.shape)
    inner = ((x / (anatomy.body_ax - 12)) ** 2 + (y / (anatomy.body_ay - 12)) ** 2) <= 1.0
    hu[body] = FAT_HU
    hu[np.broadcast_to(inner, hu.shape)] = SOFT_TISSUE_HU
    _paint_ribs_and_spine(hu, x, y, z, anatomy)
    _paint_table(hu, x, y, anatomy)

    lungs = _lung_labels(x, y, z, anatomy)
    hu[lungs > 0] = PARENCHYMA_HU + _parenchyma_texture(hu.shape, y, anatomy, rng)[lungs > 0]

    grid = _Grid(origin=np.array(origin), spacing=np.array(spacing), shape=hu.shape)
    airway_tree, vessel_tree = _branching_trees(anatomy, rng)
    vessels = grid.tubes(vessel_tree) & (lungs > 0)
    hu[vessels] = SOFT_TISSUE_HU
    airway_walls = grid.tubes([(a, b, r + 1.5) for a, b, r in airway_tree])
    airways = grid.tubes(airway_tree)
    hu[airway_walls & ~airways] = SOFT_TISSUE_HU
    hu[airways] = AIR_HU

    hu = ndimage.gaussian_filter(hu, sigma=0.5)
    if noise_hu > 0:
        hu += rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    volume = CTVolume(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        source=f"phantom(seed={seed})",
        description=f"thorax phantom seed {seed}",
    )
    return PhantomCase(volume=volume, lungs=lungs, airways=airways)


def _sample_anatomy(rng: np.random.Generator, variation: float) -> _Anatomy:
    def jitter(value: float, relative: float) -> float:
        return float(value * (1.0 + variation * relative * rng.uniform(-1.0, 1.0)))

    scale = jitter(1.0, 0.08)
    return _Anatomy(
        scale=scale,
        body_ax=jitter(180.0, 0.06) * scale,
        body_ay=jitter(148.0, 0.06) * scale,
        lung_rx=jitter(66.0, 0.08) * scale,
        lung_ry=jitter(86.0, 0.08) * scale,
        lung_cx=jitter(78.0, 0.05) * scale,
        lung_cy=jitter(0.0, 0.5) * scale,
        apex_z=jitter(155.0, 0.05) * scale,
        base_z_right=jitter(-85.0, 0.12) * scale,
        base_z_left=jitter(-100.0, 0.12) * scale,
        dome_h=jitter(45.0, 0.2) * scale,
        heart_c=(jitter(22.0, 0.3) * scale, jitter(-35.0, 0.2) * scale, jitter(-55.0, 0.15) * scale),
        heart_r=(jitter(62.0, 0.1) * scale, jitter(55.0, 0.1) * scale, jitter(58.0, 0.1) * scale),
    )


def _lung_labels(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: _Anatomy) -> np.ndarray:
    """Two lungs: tapered elliptic columns with a rounded apex, a domed base and a cardiac notch."""
    labels = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.uint8)
    hx, hy, hz = a.heart_c
    rx, ry, rz = a.heart_r
    heart = ((x - hx) / rx) ** 2 + ((y - hy) / ry) ** 2 + ((z - hz) / rz) ** 2 <= 1.0
    for label, side, base in ((RIGHT_LUNG, -1.0, a.base_z_right), (LEFT_LUNG, 1.0, a.base_z_left)):
        cx = side * a.lung_cx
        u = (x - cx) / a.lung_rx
        v = (y - a.lung_cy) / a.lung_ry
        radial = u**2 + v**2
        height = (z - base) / (a.apex_z - base)
        taper = np.clip(1.0 - np.clip(height - 0.55, 0.0, None) ** 2 / 0.2025, 0.0, 1.0)
        dome = base + a.dome_h * np.clip(1.0 - radial, 0.0, 1.0)
        medial = side * (x - cx) > -a.lung_rx * 0.85
        inside = (radial <= taper) & (z >= dome) & (z <= a.apex_z) & medial & ~heart
        labels[inside] = label
    return labels


def _paint_ribs_and_spine(hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, a: _Anatomy) -> None:
    ring = ((x / (a.body_ax - 14)) ** 2 + (y / (a.body_ay - 14)) ** 2)
    rib_band = (ring <= 1.0) & (ring >= 0.86) & (y > -a.body_ay * 0.75)
    rib_level = np.sin(2 * np.pi * z / (24.0 * a.scale)) > 0.45
    hu[rib_band & rib_level] = BONE_HU
    spine_y = a.body_ay - 42 * a.scale
    spine = (x**2 + (y - spine_y) ** 2) <= (20 * a.scale) ** 2
    hu[np.broadcast_to(spine, hu.shape)] = BONE_HU - 250
    aorta = ((x - 24 * a.scale) ** 2 + (y - spine_y + 35 * a.scale) ** 2) <= (13 * a.scale) ** 2
    hu[np.broadcast_to(aorta, hu.shape)] = SOFT_TISSUE_HU


def _paint_table(hu: np.ndarray, x: np.ndarray, y: np.ndarray, a: _Anatomy) -> None:
    """A curved table under the patient's back (posterior = +y), separated by a thin air gap."""
    top = a.body_ay + 6 + 0.0008 * x**2
    table = (y >= top) & (y <= top + 12) & (np.abs(x) < 190)
    hu[np.broadcast_to(table, hu.shape)] = TABLE_HU


def _parenchyma_texture(shape: tuple[int, ...], y: np.ndarray, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Smooth heterogeneity plus the gravity-dependent gradient (denser posteriorly when supine)."""
    smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, size=shape).astype(np.float32), sigma=3.0)
    smooth *= 18.0 / max(float(smooth.std()), 1e-6)
    gradient = 35.0 * np.clip((y - a.lung_cy) / a.lung_ry, -1.0, 1.0)
    return smooth + gradient


Segment = tuple[np.ndarray, np.ndarray, float]

# Unit-ish directions (lateral, anterior-posterior, cranio-caudal) of the lobar vessel trunks;
# x is mirrored for the right lung.
_VESSEL_DIRECTIONS = ((0.5, 0.0, -0.9), (0.6, -0.6, -0.3), (0.6, 0.6, -0.4), (0.4, -0.3, 0.9), (0.5, 0.5, 0.8), (1.0, 0.0, 0.1))


def _branching_trees(a: _Anatomy, rng: np.random.Generator) -> tuple[list[Segment], list[Segment]]:
    """Airway and vessel trees as (start, end, radius) segments in world mm."""
    s = a.scale
    carina = np.array([0.0, 0.0, 75.0 * s])
    airway: list[Segment] = [(np.array([0.0, -8.0 * s, 200.0]), carina, 8.5 * s)]
    vessels: list[Segment] = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * 42.0 * s, 8.0 * s, 45.0 * s])
        airway.append((carina, hilum, 6.0 * s))
        _grow(airway, hilum, np.array([side * 0.5, 0.1, -0.85]), 4.2 * s, 38.0 * s, 4, rng)
        vessel_root = hilum + np.array([side * 4.0, -10.0 * s, -4.0])
        vessels.append((np.array([side * 15.0 * s, -15.0 * s, 40.0 * s]), vessel_root, 7.0 * s))
        for lobar in _VESSEL_DIRECTIONS:
            direction = np.array([side * lobar[0], lobar[1], lobar[2]])
            _grow(vessels, vessel_root, direction, 4.5 * s, 34.0 * s, 6, rng)
    return airway, vessels


def _grow(
    segments: list[Segment],
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: float,
    depth: int,
    rng: np.random.Generator,
) -> None:
    if depth == 0 or radius < 0.7:
        return
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    segments.append((start, end, radius))
    for _ in range(2):
        turn = rng.normal(0.0, 0.55, size=3)
        child = direction + turn
        _grow(segments, end, child, radius * 0.72, length * 0.72, depth - 1, rng)


@dataclass(frozen=True)
class _Grid:
    """World <-> voxel mapping for an identity-direction grid, used to rasterise tubes."""

    origin: np.ndarray  # (3,) x, y, z mm
    spacing: np.ndarray  # (3,) x, y, z mm
    shape: tuple[int, ...]  # (Z, Y, X)

    def tubes(self, segments: list[Segment]) -> np.ndarray:
        """Boolean mask (Z, Y, X) of voxels within each segment's radius of the segment."""
        mask = np.zeros(self.shape, dtype=bool)
        size_xyz = np.array(self.shape[::-1])
        for start, end, radius in segments:
            low = np.floor((np.minimum(start, end) - radius - self.origin) / self.spacing).astype(int)
            high = np.ceil((np.maximum(start, end) + radius - self.origin) / self.spacing).astype(int) + 1
            low = np.clip(low, 0, size_xyz)
            high = np.clip(high, 0, size_xyz)
            if np.any(high <= low):
                continue
            axes = [self.origin[i] + self.spacing[i] * np.arange(low[i], high[i]) for i in range(3)]
            px, py, pz = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
            d = end - start
            t = ((px - start[0]) * d[0] + (py - start[1]) * d[1] + (pz - start[2]) * d[2]) / max(float(d @ d), 1e-9)
            t = np.clip(t, 0.0, 1.0)
            dist2 = (px - start[0] - t * d[0]) ** 2 + (py - start[1] - t * d[1]) ** 2 + (pz - start[2] - t * d[2]) ** 2
            mask[low[2]:high[2], low[1]:high[1], low[0]:high[0]] |= dist2 <= radius**2
        return mask
