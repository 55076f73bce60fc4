"""Connected clusters of low-attenuation voxels and their size distribution.

Clusters are 6-connected (voxels sharing a face). On a noisy scan a few percent of normal lung
voxels fall below -950 HU at random; with 26-connectivity such scattered voxels percolate into
large spurious clusters at a much lower density (site-percolation threshold about 0.10 for the
26-neighbourhood against 0.31 for 6), which would fake large emphysema clusters and flatten D.

The cumulative size distribution of clusters follows roughly a power law,
``N(size >= s) ~ s ** -D`` (Mishima et al., PNAS 1999, in 2D): a smaller D means relatively more
large clusters, i.e. coalescing holes. D is fitted by least squares of ``log10 N(>= s)`` against
``log10 s`` at sizes spaced evenly in log scale (10 per decade, so each decade weighs the same
however many clusters it holds), from :data:`FIT_MIN_ML` (and at least :data:`FIT_MIN_VOXELS`
voxels: smaller clusters are mostly noise and their sizes are quantised by the grid) up to the
size above which fewer than :data:`FIT_MIN_TAIL` clusters remain; at least
:data:`FIT_MIN_CLUSTERS` clusters must be in that range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

CONNECTIVITY = 6
_STRUCTURE = ndimage.generate_binary_structure(3, 1)
LARGE_CLUSTER_ML = 4.0 / 3.0 * np.pi * 5.0**3 / 1000.0
"""Volume of a 10 mm sphere (0.52 mL): radiology calls a lucency over 1 cm across a bulla."""
FIT_MIN_ML = 0.01
FIT_MIN_VOXELS = 2
FIT_MIN_TAIL = 3
FIT_POINTS_PER_DECADE = 10
FIT_MIN_POINTS = 4
FIT_MIN_CLUSTERS = 10


def label_clusters(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-connected components of a boolean (Z, Y, X) mask.

    Returns:
        ``(labels, sizes)``: int32 labels (0 background, 1..n clusters) and int64 sizes (n + 1,)
        in voxels indexed by label (``sizes[0]`` counts the background).
    """
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    sizes = np.bincount(labels[mask], minlength=count + 1)  # only the foreground: much faster
    sizes[0] = mask.size - int(sizes[1:].sum())
    return labels, sizes


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares fit of ``log10 N(>= s) = intercept - d * log10 s`` (s in mL)."""

    d: float
    intercept: float
    r2: float
    min_ml: float
    max_ml: float
    n_clusters: int
    n_points: int


def fit_power_law(sizes_ml: np.ndarray, min_ml: float) -> PowerLawFit | None:
    """Exponent D of the cumulative size distribution of clusters at least ``min_ml`` large.

    Returns None with fewer than :data:`FIT_MIN_CLUSTERS` such clusters or fewer than
    :data:`FIT_MIN_POINTS` log-spaced sizes with at least :data:`FIT_MIN_TAIL` clusters at or
    above them (too few clusters for a slope).
    """
    sizes = np.sort(np.asarray(sizes_ml, dtype=np.float64))
    sizes = sizes[sizes >= min_ml]
    if sizes.size < max(FIT_MIN_CLUSTERS, FIT_MIN_TAIL):
        return None
    max_ml = float(sizes[-FIT_MIN_TAIL])
    n_grid = int(np.floor(np.log10(max_ml / min_ml) * FIT_POINTS_PER_DECADE)) + 1
    grid = min_ml * 10.0 ** (np.arange(n_grid) / FIT_POINTS_PER_DECADE)
    if grid.size < FIT_MIN_POINTS:
        return None
    at_least = sizes.size - np.searchsorted(sizes, grid, side="left")
    x, y = np.log10(grid), np.log10(at_least)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    spread = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / spread if spread > 0 else 1.0
    return PowerLawFit(d=float(-slope), intercept=float(intercept), r2=r2, min_ml=float(min_ml),
                       max_ml=float(grid[-1]), n_clusters=int(sizes.size), n_points=int(grid.size))


@dataclass(frozen=True)
class ClusterStats:
    """Size statistics of the LAA clusters of one scan (volumes in mL).

    ``n_small`` / ``n_large`` split at :data:`LARGE_CLUSTER_ML`; ``percent_volume_in_large`` is the
    share of the LAA volume held by large clusters. ``sizes_ml`` (every cluster) is kept for plots
    and left out of :meth:`to_dict`.
    """

    threshold_hu: float
    connectivity: int
    n_clusters: int
    total_ml: float
    median_ml: float | None
    largest_ml: float | None
    large_threshold_ml: float
    n_small: int
    n_large: int
    percent_volume_in_large: float | None
    power_law: PowerLawFit | None
    sizes_ml: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("sizes_ml", "power_law")}
        out["power_law"] = asdict(self.power_law) if self.power_law else None
        return out


def cluster_statistics(sizes_voxels: np.ndarray, voxel_ml: float, threshold_hu: float) -> ClusterStats:
    """Summarise cluster sizes given in voxels (background excluded) on a grid of ``voxel_ml``."""
    sizes_ml = np.sort(np.asarray(sizes_voxels, dtype=np.float64) * voxel_ml)
    total = float(sizes_ml.sum())
    large = sizes_ml >= LARGE_CLUSTER_ML
    return ClusterStats(
        threshold_hu=threshold_hu,
        connectivity=CONNECTIVITY,
        n_clusters=int(sizes_ml.size),
        total_ml=total,
        median_ml=float(np.median(sizes_ml)) if sizes_ml.size else None,
        largest_ml=float(sizes_ml[-1]) if sizes_ml.size else None,
        large_threshold_ml=LARGE_CLUSTER_ML,
        n_small=int(sizes_ml.size - large.sum()),
        n_large=int(large.sum()),
        percent_volume_in_large=100.0 * float(sizes_ml[large].sum()) / total if total > 0 else None,
        power_law=fit_power_law(sizes_ml, max(FIT_MIN_ML, FIT_MIN_VOXELS * voxel_ml)),
        sizes_ml=sizes_ml,
    )
