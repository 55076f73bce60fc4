"""Densitometric emphysema quantification on the native CT grid.

For every region (whole lung, right/left, upper/middle/lower thirds of both lungs and of each lung,
see :mod:`~drasclr_monailabel.emphysema.regions`): lung volume (litres, from the voxel spacing),
mean HU, Perc15 (15th percentile of lung HU, numpy's linear interpolation as in the Chest Imaging
Platform) and %LAA-950, -910 and -856 (percentage of lung voxels with HU *strictly below* the
threshold). With an emphysema mask (a model's prediction or an annotation: 0 background, >0
emphysema, 1/2/3 centrilobular/panlobular/paraseptal), the emphysema volume, its percentage of the
region and the same densitometry inside the mask are added. Plus the size statistics of the
6-connected LAA-950 clusters of the whole lung.

Nothing is resampled: volumes come from the voxel spacing, so results do not depend on a
preprocessing step (B-spline resampling smooths noise and lowers %LAA-950 by itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from drasclr_monailabel.emphysema.clusters import ClusterStats, cluster_statistics, label_clusters
from drasclr_monailabel.emphysema.histogram import HuHistogram, histograms_by_key
from drasclr_monailabel.emphysema.regions import N_ZONE_CODES, REGIONS, THIRDS, LungZones, bounding_box, lung_zones
from drasclr_monailabel.errors import NoLungsError
from drasclr_monailabel.io.volume import CTVolume

FORMAT = "drasclr-emphysema/1"
LAA_THRESHOLDS_HU = (-950, -910, -856)
PERC_Q = 15.0
CLUSTER_THRESHOLD_HU = -950
SUBTYPES = {1: "centrilobular", 2: "panlobular", 3: "paraseptal"}
"""Label values of the project's emphysema label maps (docs/formats.md)."""


@dataclass(frozen=True)
class Densitometry:
    """HU statistics of a set of voxels (None when the set is empty)."""

    mean_hu: float | None
    perc15_hu: float | None
    laa950_percent: float | None
    laa910_percent: float | None
    laa856_percent: float | None

    @classmethod
    def of(cls, histogram: HuHistogram) -> Densitometry:
        laa = [histogram.percent_below(t) for t in LAA_THRESHOLDS_HU]
        return cls(histogram.mean(), histogram.percentile(PERC_Q), *laa)


@dataclass(frozen=True)
class MaskedEmphysema:
    """The emphysema mask inside one region: volume, share of the region, subtypes, densitometry."""

    volume_ml: float
    percent_of_region: float | None
    subtype_percent_of_region: dict[str, float]
    densitometry: Densitometry


@dataclass(frozen=True)
class RegionStats:
    """Numbers for one lung region; percentages are of the region's lung volume."""

    region: str
    voxels: int
    volume_l: float
    densitometry: Densitometry
    mask: MaskedEmphysema | None

    def to_row(self) -> dict[str, Any]:
        """One flat CSV row (mask columns present only when a mask was given)."""
        row: dict[str, Any] = {"region": self.region, "voxels": self.voxels, "volume_l": self.volume_l}
        row.update(asdict(self.densitometry))
        if self.mask is not None:
            row["mask_volume_ml"] = self.mask.volume_ml
            row["mask_percent"] = self.mask.percent_of_region
            for name, percent in self.mask.subtype_percent_of_region.items():
                row[f"mask_{name}_percent"] = percent
            row.update({f"mask_{k}": v for k, v in asdict(self.mask.densitometry).items()})
        return row


@dataclass(frozen=True)
class EmphysemaReport:
    """Everything :func:`quantify` measured on one scan.

    ``regions`` is in :data:`~drasclr_monailabel.emphysema.regions.REGIONS` order. ``histogram``
    (whole-lung HU histogram, for plots) is left out of :meth:`to_dict`.
    """

    source: str
    size_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    voxel_ml: float
    regions: list[RegionStats]
    clusters: ClusterStats | None
    apex_cut: bool
    base_cut: bool
    warnings: list[str]
    histogram: HuHistogram = field(repr=False, compare=False)

    def region(self, name: str) -> RegionStats:
        """The stats of region ``name`` (e.g. ``"whole"``, ``"left_upper"``)."""
        for stats in self.regions:
            if stats.region == name:
                return stats
        raise KeyError(f"no region {name!r}; known: {', '.join(REGIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats to 6 significant digits, ints, strings, lists, None)."""
        return _rounded({
            "format": FORMAT,
            "source": self.source,
            "size_xyz": list(self.size_xyz),
            "spacing_mm": list(self.spacing_mm),
            "voxel_ml": self.voxel_ml,
            "conventions": CONVENTIONS,
            "coverage": {"apex_cut": self.apex_cut, "base_cut": self.base_cut},
            "warnings": list(self.warnings),
            "regions": {s.region: {k: v for k, v in asdict(s).items() if k != "region"} for s in self.regions},
            "clusters": self.clusters.to_dict() if self.clusters else None,
        })

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per region, for CSV (floats to 6 significant digits)."""
        return [_rounded(s.to_row()) for s in self.regions]


CONVENTIONS = {
    "laa": "percentage of lung voxels with HU strictly below the threshold",
    "laa_thresholds_hu": list(LAA_THRESHOLDS_HU),
    "perc15": "15th percentile of lung HU, linear interpolation between order statistics (numpy default, as CIP)",
    "thirds": "equal-volume thirds of each lung along the cranio-caudal axis, cut between slices",
    "volume": "voxel count x voxel volume on the native grid (no resampling)",
    "clusters": f"{CLUSTER_THRESHOLD_HU} HU, 6-connected, whole lung",
}


def quantify(
    volume: CTVolume,
    lungs: np.ndarray,
    emphysema_mask: np.ndarray | None = None,
    *,
    clusters: bool = True,
) -> EmphysemaReport:
    """Measure emphysema per lung region.

    Args:
        volume: the CT (int16 HU), any orientation.
        lungs: uint8 (Z, Y, X) on the same grid, 0 outside / 1 right / 2 left lung.
        emphysema_mask: optional integer (Z, Y, X) on the same grid, >0 = emphysema. A label map
            with values 0-3 that uses 2 or 3 is also reported per subtype (1 centrilobular,
            2 panlobular, 3 paraseptal); a 0/1 mask is plain emphysema. Voxels outside the lung
            mask are ignored.
        clusters: also compute the LAA-950 cluster statistics (the slowest part, about 1 s on a
            512 x 512 x 400 scan).

    Raises:
        ValueError: arrays of different shapes or lung labels other than 0/1/2.
        NoLungsError: the lung mask is empty.
    """
    _check_inputs(volume, lungs, emphysema_mask)
    zones = lung_zones(lungs, volume.spacing, volume.direction)
    box = bounding_box(lungs)
    codes = zones.codes[box]
    inside = codes > 0
    hu = volume.hu[box][inside]
    mask_values = None if emphysema_mask is None else np.clip(emphysema_mask[box][inside], 0, 4).astype(np.uint8)
    n_mask = 1 if mask_values is None else 5  # 0 none, 1-3 subtypes, 4 any other positive value
    keys = codes[inside].astype(np.int64) * n_mask + (0 if mask_values is None else mask_values)
    counts, lowest = histograms_by_key(hu, keys, N_ZONE_CODES * n_mask)
    counts = counts.reshape(N_ZONE_CODES, n_mask, -1)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0

    with_subtypes = bool(counts[:, 2:4].any() and not counts[:, 4].any()) if mask_values is not None else False
    regions = [_region_stats(name, counts[list(zone_codes)].sum(axis=0), lowest, voxel_ml, mask_values is not None,
                             with_subtypes) for name, zone_codes in REGIONS.items()]
    cluster_stats = None
    if clusters:
        laa = np.zeros(codes.shape, dtype=bool)
        laa[inside] = hu < CLUSTER_THRESHOLD_HU
        _, sizes = label_clusters(laa)
        cluster_stats = cluster_statistics(sizes[1:], voxel_ml, CLUSTER_THRESHOLD_HU)
    return EmphysemaReport(
        source=volume.source,
        size_xyz=volume.shape_xyz,
        spacing_mm=volume.spacing,
        voxel_ml=voxel_ml,
        regions=regions,
        clusters=cluster_stats,
        apex_cut=zones.apex_cut,
        base_cut=zones.base_cut,
        warnings=_warnings(zones, regions),
        histogram=HuHistogram(counts.sum(axis=(0, 1)), lowest),
    )


def _region_stats(name: str, counts: np.ndarray, lowest: int, voxel_ml: float, with_mask: bool,
                  with_subtypes: bool) -> RegionStats:
    """Stats of one region from its (mask value, HU) histogram counts (n_mask, K)."""
    lung = HuHistogram(counts.sum(axis=0), lowest)
    voxels = lung.total
    masked = None
    if with_mask:
        emphysema = HuHistogram(counts[1:].sum(axis=0), lowest)
        share = (lambda n: 100.0 * n / voxels) if voxels else (lambda n: None)
        masked = MaskedEmphysema(
            volume_ml=emphysema.total * voxel_ml,
            percent_of_region=share(emphysema.total),
            subtype_percent_of_region={label: share(int(counts[value].sum())) for value, label in SUBTYPES.items()}
            if with_subtypes else {},
            densitometry=Densitometry.of(emphysema),
        )
    return RegionStats(region=name, voxels=voxels, volume_l=voxels * voxel_ml / 1000.0,
                       densitometry=Densitometry.of(lung), mask=masked)


def _check_inputs(volume: CTVolume, lungs: np.ndarray, mask: np.ndarray | None) -> None:
    if lungs.shape != volume.hu.shape:
        raise ValueError(f"lung mask shape {lungs.shape} differs from the CT's {volume.hu.shape}")
    if mask is not None and mask.shape != volume.hu.shape:
        raise ValueError(f"emphysema mask shape {mask.shape} differs from the CT's {volume.hu.shape}")
    if int(lungs.max(initial=0)) > 2 or int(lungs.min(initial=0)) < 0:
        raise ValueError("lung mask values must be 0 (outside), 1 (right lung) or 2 (left lung)")
    if not np.any(lungs):
        raise NoLungsError(volume.source or "<volume>", "the lung mask is empty (no lung voxels to quantify)")


def _warnings(zones: LungZones, regions: list[RegionStats]) -> list[str]:
    out = []
    if zones.partial_coverage:
        cut = " and ".join(p for p, c in (("apex", zones.apex_cut), ("base", zones.base_cut)) if c)
        out.append(f"partial lung coverage (lung {cut} outside the scan): volumes and "
                   f"{'/'.join(THIRDS)} thirds refer to the scanned part of the lung only")
    by_name = {r.region: r for r in regions}
    for side in ("right", "left"):
        if by_name[side].voxels == 0:
            out.append(f"no {side} lung voxels in the lung mask: {side}-side regions are empty")
    return out


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 6 significant digits (a voxel count has fewer)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.6g}")
    if isinstance(value, np.integer):
        return int(value)
    return value
