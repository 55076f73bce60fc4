"""Emphysema pseudo-labels from low-attenuation clusters: a starting segmentation for annotators.

Steps, all on the native grid inside the lung mask's bounding box:

1. Light Gaussian smoothing of the HU (sigma in mm) so that single noisy voxels do not pass the
   threshold while real holes (several voxels of air) do.
2. Voxels of the lung below the threshold (-950 HU), grouped into 6-connected clusters.
3. Clusters smaller than ``min_cluster_ml`` are dropped (noise).
4. Airway lumen is dropped: clusters that touch a pocket of sub-threshold air *outside* the lung
   mask of at least :data:`AIRWAY_MIN_ML` that leaves the lungs' box only upwards (the lumen
   continues into the trachea and main bronchi the lung mask excludes; air outside the body,
   lung the mask missed at the scan's edge and small gaps along the mask's border do not count),
   and tube-shaped clusters (longer than ``airway_min_length_mm`` and ``airway_min_elongation``
   times longer than wide, from the principal axes of the cluster's voxels in mm).
5. Each remaining cluster gets a subtype (unless ``binary``), in this order: paraseptal (3) if it
   reaches within ``pleura_mm`` of the pleura and at least ``paraseptal_band_fraction`` of it
   lies within ``paraseptal_band_mm`` of the pleura (subpleural lucencies, bullae along the
   chest wall); panlobular (2) if it is at least ``panlobular_min_ml`` (a confluent region
   larger than a secondary lobule that reaches deep into the lung); centrilobular (1) otherwise
   (holes inside the lung, away from the pleura).

The pleura is the surface of the lung mask after closing gaps narrower than ``pleura_close_mm``
(so that bronchi and vessels a lung mask cut out do not count as pleura); where the lung touches
the edge of the scan the cut is not pleura. Fissures are not seen (that needs a lobe
segmentation), so paraseptal emphysema along fissures is labelled centrilobular.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from drasclr_monailabel.emphysema.clusters import label_clusters
from drasclr_monailabel.emphysema.regions import bounding_box, superior_axis
from drasclr_monailabel.io.volume import CTVolume

BACKGROUND = 0
CENTRILOBULAR = 1
PANLOBULAR = 2
PARASEPTAL = 3
EMPHYSEMA = 1
"""The single foreground value of binary pseudo-labels."""
AIRWAY_MIN_ML = 1.0
"""Smallest pocket of air outside the lung mask taken for trachea or main bronchus lumen."""


@dataclass(frozen=True)
class PseudoLabelOptions:
    """Settings of :func:`laa_pseudo_labels` (HU, mm, mL); every field has a working default."""

    threshold_hu: float = -950.0
    smoothing_sigma_mm: float = 0.7
    min_cluster_ml: float = 0.02
    remove_airways: bool = True
    airway_min_length_mm: float = 15.0
    airway_min_elongation: float = 4.0
    panlobular_min_ml: float = 5.0
    pleura_mm: float = 3.0
    paraseptal_band_mm: float = 10.0
    paraseptal_band_fraction: float = 0.9
    pleura_close_mm: float = 5.0
    binary: bool = False

    def __post_init__(self) -> None:
        for name in ("smoothing_sigma_mm", "min_cluster_ml", "airway_min_length_mm", "pleura_mm", "paraseptal_band_mm",
                     "pleura_close_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("airway_min_elongation", "panlobular_min_ml"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.paraseptal_band_fraction <= 1:
            raise ValueError(f"paraseptal_band_fraction must be in (0, 1], got {self.paraseptal_band_fraction}")


def laa_pseudo_labels(volume: CTVolume, lungs: np.ndarray, options: PseudoLabelOptions | None = None) -> np.ndarray:
    """Emphysema pseudo-labels of one scan.

    Args:
        volume: the CT (int16 HU), any orientation.
        lungs: uint8 (Z, Y, X) lung mask on the same grid (0 outside, >0 lung).
        options: thresholds and sizes; defaults to :class:`PseudoLabelOptions()`.

    Returns:
        uint8 (Z, Y, X): 0 background, 1 centrilobular, 2 panlobular, 3 paraseptal (the project's
        label set), or 0/1 when ``options.binary``.
    """
    options = options or PseudoLabelOptions()
    if lungs.shape != volume.hu.shape:
        raise ValueError(f"lung mask shape {lungs.shape} differs from the CT's {volume.hu.shape}")
    out = np.zeros(volume.hu.shape, dtype=np.uint8)
    if not np.any(lungs):
        return out
    spacing_zyx = np.asarray(volume.spacing[::-1], dtype=np.float64)
    margin = int(np.ceil(4 * options.smoothing_sigma_mm / spacing_zyx.min())) + 1
    box = bounding_box(lungs, margin)
    lung = lungs[box] > 0
    hu = volume.hu[box].astype(np.float32)
    if options.smoothing_sigma_mm > 0:
        hu = ndimage.gaussian_filter(hu, sigma=options.smoothing_sigma_mm / spacing_zyx, mode="nearest")
    air = hu < options.threshold_hu
    labels, sizes = label_clusters(air & lung)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    keep = sizes * voxel_ml >= options.min_cluster_ml
    keep[0] = False
    if options.remove_airways:
        min_voxels = int(np.ceil(AIRWAY_MIN_ML / voxel_ml))
        airway = _airway_air(air & ~lung, superior_axis(volume.direction), min_voxels)
        keep &= ~_present(labels, _face_dilate(airway), len(sizes))
        keep &= ~_tubular(labels, keep, spacing_zyx, options.airway_min_length_mm, options.airway_min_elongation)
    if options.binary:
        classes = np.where(keep, EMPHYSEMA, BACKGROUND).astype(np.uint8)
    else:
        at_scan_edge = [(b.start == 0, b.stop == n) for b, n in zip(box, lungs.shape)]
        near, band = _subpleural_shells(lung, spacing_zyx, (options.pleura_mm, options.paraseptal_band_mm),
                                        options.pleura_close_mm, at_scan_edge)
        in_band = np.bincount(labels[band], minlength=len(sizes))
        classes = np.full(len(sizes), CENTRILOBULAR, dtype=np.uint8)
        classes[sizes * voxel_ml >= options.panlobular_min_ml] = PANLOBULAR
        subpleural = in_band >= options.paraseptal_band_fraction * sizes
        classes[_present(labels, near, len(sizes)) & subpleural] = PARASEPTAL
        classes[~keep] = BACKGROUND
    out[box] = classes[labels]
    return out


def _present(labels: np.ndarray, region: np.ndarray, n_labels: int) -> np.ndarray:
    """bool (n_labels,): which clusters have a voxel in ``region`` (label 0 never)."""
    hit = np.zeros(n_labels, dtype=bool)
    hit[labels[region]] = True
    hit[0] = False
    return hit


def _airway_air(outside_air: np.ndarray, superior: tuple[int, int], min_voxels: int) -> np.ndarray:
    """The parts of the sub-threshold air outside the lung mask that can be airway lumen.

    The trachea and main bronchi the lung mask leaves out are a sizeable volume of air inside the
    chest that leaves the lungs' box only upwards (the trachea continues to the neck). Air that
    reaches any other face of the box is something else (air outside the body, lung that the
    mask missed at the edge of the scan), and small pockets are lung the mask's border missed;
    touching those must not remove an emphysema cluster.

    Args:
        outside_air: bool (Z, Y, X) in the lungs' box: below the threshold and outside the mask.
        superior: ``(axis, step)`` of :func:`~drasclr_monailabel.emphysema.regions.superior_axis`.
        min_voxels: smallest airway component (the main bronchi hold several mL).
    """
    components, count = ndimage.label(outside_air, structure=ndimage.generate_binary_structure(3, 1))
    axis, step = superior
    allowed = np.bincount(components[outside_air], minlength=count + 1) >= min_voxels
    allowed[0] = False
    for face_axis in range(3):
        for end in (0, -1):
            if face_axis == axis and end == (-1 if step > 0 else 0):
                continue  # the superior face
            allowed[np.unique(np.take(components, end, axis=face_axis))] = False
    return allowed[components]


def _face_dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus its 6 face neighbours (a 3D cross dilation by array shifts, no padding)."""
    out = mask.copy()
    for axis in range(3):
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(None, -1), slice(1, None)
        out[tuple(low)] |= mask[tuple(high)]
        out[tuple(high)] |= mask[tuple(low)]
    return out


def _tubular(labels: np.ndarray, candidates: np.ndarray, spacing_zyx: np.ndarray, min_length_mm: float,
             min_elongation: float) -> np.ndarray:
    """bool (n_labels,): candidate clusters shaped like a tube (airway lumen).

    Each cluster's voxel positions (mm) give a covariance matrix; a uniform rod of length L has
    variance L**2 / 12 along its axis, so ``sqrt(12 * largest eigenvalue)`` is its length and
    ``sqrt(largest / second eigenvalue)`` how many times longer than wide it is.
    """
    n = candidates.size
    points = np.nonzero(candidates[labels])
    ids = labels[points]
    coords = [p.astype(np.float64) * s for p, s in zip(points, spacing_zyx)]
    count = np.maximum(np.bincount(ids, minlength=n), 1).astype(np.float64)
    means = [np.bincount(ids, weights=c, minlength=n) / count for c in coords]
    cov = np.zeros((n, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            second = np.bincount(ids, weights=coords[i] * coords[j], minlength=n) / count
            cov[:, i, j] = cov[:, j, i] = second - means[i] * means[j]
    cov += np.diag(spacing_zyx**2 / 12.0)  # each voxel is a box, not a point
    eig = np.linalg.eigvalsh(cov)  # ascending
    length = np.sqrt(12.0 * eig[:, 2])
    elongation = np.sqrt(eig[:, 2] / np.maximum(eig[:, 1], 1e-12))
    return candidates & (length >= min_length_mm) & (elongation >= min_elongation)


def _subpleural_shells(lung: np.ndarray, spacing_zyx: np.ndarray, depths_mm: tuple[float, ...], close_mm: float,
                       at_scan_edge: list[tuple[bool, bool]]) -> list[np.ndarray]:
    """For each depth, the lung voxels within that distance (box distance per axis) of the pleura.

    The pleura is the surface of the lung mask closed by ``close_mm``. Box-shaped min/max filters
    are separable (1D passes whose cost does not depend on their length), so this costs a
    fraction of a Euclidean distance transform. Where the box meets the edge of the scan the mask
    is extended by replication: a cut by the field of view is not pleura.
    """
    close = np.rint(close_mm / spacing_zyx).astype(int)
    depths = [np.maximum(np.rint(d / spacing_zyx).astype(int), 1) for d in depths_mm]
    pad = close + np.max(depths, axis=0)
    closed = lung.astype(np.uint8)
    for axis in range(3):
        for side, at_edge in enumerate(at_scan_edge[axis]):
            widths = [(0, 0)] * 3
            widths[axis] = (pad[axis], 0) if side == 0 else (0, pad[axis])
            closed = np.pad(closed, widths, mode="edge" if at_edge else "constant")
    for filter1d in (ndimage.maximum_filter1d, ndimage.minimum_filter1d):
        for axis in range(3):
            if close[axis]:
                closed = filter1d(closed, 2 * close[axis] + 1, axis=axis, mode="constant")
    shells = []
    for depth in depths:
        inner = closed
        for axis in range(3):
            inner = ndimage.minimum_filter1d(inner, 2 * depth[axis] + 1, axis=axis, mode="constant")
        shells.append(lung & ~inner[tuple(slice(p, p + n) for p, n in zip(pad, lung.shape))].astype(bool))
    return shells
