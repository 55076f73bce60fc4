"""Write an :class:`EmphysemaReport` as JSON, CSV (one row per region) and a one-page PNG.

The PNG shows LAA-950 voxels in colour on three axial slices (the middle slice of the upper,
middle and lower third of the lung volume) and one coronal slice through the lungs, in the
radiological convention (patient's right on the image's left, anterior up, head up); the lung
HU histogram with the -950/-910/-856 thresholds and Perc15; %LAA-950 per zone; and the
cumulative size distribution of the LAA clusters with its power-law fit.

Every file is rendered in memory first (:func:`render_report`) and then written atomically, so a
failure leaves no partial output; the JSON is written last.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drasclr_monailabel.emphysema.quantify import CLUSTER_THRESHOLD_HU, LAA_THRESHOLDS_HU, EmphysemaReport
from drasclr_monailabel.emphysema.regions import SIDES, THIRDS
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.utils.atomic import atomic_open, write_json, write_text

LAA_COLOUR = "#ff3b30"
LUNG_COLOUR = "#35c9ff"
MASK_COLOUR = "#34c759"
THRESHOLD_COLOURS = {-950: "#d70015", -910: "#ff9500", -856: "#c9a400"}
SIDE_COLOURS = {"right": "#4e79a7", "left": "#f28e2b"}
WINDOW_HU = (-1200, 200)
HISTOGRAM_RANGE_HU = (-1024, -500)
HISTOGRAM_BIN_HU = 4


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :meth:`RenderedReport.write`."""

    json: Path
    csv: Path
    png: Path


@dataclass(frozen=True)
class RenderedReport:
    """A report rendered in memory: write it only once everything else has succeeded."""

    json: dict
    csv: str
    png: bytes

    def write(self, out_dir: str | Path, scan_id: str) -> ReportFiles:
        """Write ``<scan_id>_emphysema.csv``, ``.png`` and, last, ``.json`` into ``out_dir``."""
        out_dir = Path(out_dir)
        files = ReportFiles(json=out_dir / f"{scan_id}_emphysema.json", csv=out_dir / f"{scan_id}_emphysema.csv",
                            png=out_dir / f"{scan_id}_emphysema.png")
        write_text(files.csv, self.csv)
        with atomic_open(files.png, "wb") as fh:
            fh.write(self.png)
        write_json(files.json, self.json)
        return files


def render_report(report: EmphysemaReport, volume: CTVolume, lungs: np.ndarray,
                  emphysema_mask: np.ndarray | None = None) -> RenderedReport:
    """JSON dict, CSV text and PNG bytes of ``report`` (nothing is written)."""
    return RenderedReport(json=report.to_dict(), csv=csv_text(report),
                          png=render_png(report, volume, lungs, emphysema_mask))


def write_report(report: EmphysemaReport, volume: CTVolume, lungs: np.ndarray, out_dir: str | Path, scan_id: str,
                 emphysema_mask: np.ndarray | None = None) -> ReportFiles:
    """Render ``report`` and write ``<scan_id>_emphysema.json``, ``.csv`` and ``.png`` into ``out_dir``."""
    return render_report(report, volume, lungs, emphysema_mask).write(out_dir, scan_id)


def csv_text(report: EmphysemaReport) -> str:
    """The per-region table as CSV text (empty cells for undefined values)."""
    rows = report.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def render_png(report: EmphysemaReport, volume: CTVolume, lungs: np.ndarray,
               emphysema_mask: np.ndarray | None = None, dpi: int = 100) -> bytes:
    """The one-page report as PNG bytes (1600 x 900 pixels at the default dpi)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    hu, spacing = _to_lps(volume.hu, volume.direction, volume.spacing)
    lung, _ = _to_lps(lungs, volume.direction, volume.spacing)
    mask = None if emphysema_mask is None else _to_lps(emphysema_mask, volume.direction, volume.spacing)[0] > 0

    fig = Figure(figsize=(16, 9), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(2, 4, height_ratios=(1.3, 1.0))
    for column, (title, z) in enumerate(zip((f"{t} third" for t in THIRDS), _axial_slices(lung))):
        _axial(fig.add_subplot(grid[0, column]), hu[z], lung[z], None if mask is None else mask[z], spacing,
               f"Axial, {title} (slice {z})")
    _coronal(fig.add_subplot(grid[0, 3]), hu, lung, mask, spacing)
    _histogram(fig.add_subplot(grid[1, 0:2]), report)
    _zone_bars(fig.add_subplot(grid[1, 2]), report)
    _cluster_distribution(fig.add_subplot(grid[1, 3]), report)
    fig.suptitle(_headline(report), fontsize=14, fontweight="bold")
    if report.warnings:
        fig.supxlabel("Warning: " + " | ".join(report.warnings), fontsize=10, color="#b00020")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _headline(report: EmphysemaReport) -> str:
    whole = report.region("whole")
    d = whole.densitometry
    name = Path(report.source).name if report.source else "scan"
    parts = [name, f"lung {whole.volume_l:.2f} L", f"%LAA-950 {_fmt(d.laa950_percent, '.1f')} %",
             f"Perc15 {_fmt(d.perc15_hu, '.0f')} HU", f"mean {_fmt(d.mean_hu, '.0f')} HU"]
    if report.clusters and report.clusters.power_law:
        parts.append(f"D {report.clusters.power_law.d:.2f}")
    if whole.mask is not None:
        parts.append(f"mask {_fmt(whole.mask.percent_of_region, '.1f')} % of lung")
    return "   |   ".join(parts)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _to_lps(array: np.ndarray, direction: tuple[float, ...],
            spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """View of a (Z, Y, X) array with axes permuted/flipped to LPS, and its spacing (x, y, z).

    In the result axis 0 runs inferior -> superior, axis 1 anterior -> posterior and axis 2
    patient right -> left, whatever the scan's orientation (only the nearest axis is used; no
    resampling, so an oblique scan is shown as acquired).
    """
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    itk_axis_of_world = [int(np.argmax(np.abs(matrix[w]))) for w in range(3)]  # world x, y, z
    order = [2 - itk_axis_of_world[w] for w in (2, 1, 0)]
    view = array.transpose(order)
    for out_axis, world in enumerate((2, 1, 0)):
        if matrix[world, itk_axis_of_world[world]] < 0:
            view = np.flip(view, axis=out_axis)
    lps_spacing = tuple(float(spacing[itk_axis_of_world[w]]) for w in range(3))
    return view, lps_spacing  # type: ignore[return-value]


def _axial_slices(lung: np.ndarray) -> list[int]:
    """Middle slice (by cumulative lung volume) of the upper, middle and lower third of the lungs."""
    per_slice = np.count_nonzero(lung, axis=(1, 2))[::-1]  # apex first
    cumulative = np.cumsum(per_slice) / max(per_slice.sum(), 1)
    from_apex = [int(np.searchsorted(cumulative, f)) for f in (1 / 6, 1 / 2, 5 / 6)]
    return [lung.shape[0] - 1 - i for i in from_apex]


def _overlay(ax, hu: np.ndarray, lung: np.ndarray, mask: np.ndarray | None, aspect: float) -> None:
    from matplotlib.colors import to_rgba

    ax.imshow(hu, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect, interpolation="bilinear")
    laa = (hu < CLUSTER_THRESHOLD_HU) & (lung > 0)
    rgba = np.zeros(hu.shape + (4,), dtype=np.float32)
    rgba[laa] = to_rgba(LAA_COLOUR, 0.9)
    ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    if np.any(lung):
        ax.contour(lung > 0, levels=[0.5], colors=LUNG_COLOUR, linewidths=0.6)
    if mask is not None and np.any(mask):
        ax.contour(mask, levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def _axial(ax, hu: np.ndarray, lung: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, float, float],
           title: str) -> None:
    rows, cols = _crop(lung, margin=10)
    _overlay(ax, hu[rows, cols], lung[rows, cols], None if mask is None else mask[rows, cols], spacing[1] / spacing[0])
    ax.set_title(title, fontsize=11)
    ax.text(0.01, 0.99, "R", transform=ax.transAxes, ha="left", va="top", color="white", fontsize=11, fontweight="bold")
    ax.text(0.99, 0.99, "L", transform=ax.transAxes, ha="right", va="top", color="white", fontsize=11, fontweight="bold")


def _coronal(ax, hu: np.ndarray, lung: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, float, float]) -> None:
    y = int(np.argmax(np.count_nonzero(lung, axis=(0, 2))))
    flip = slice(None, None, -1)  # superior at the top
    plane = hu[flip, y, :]
    lung_plane = lung[flip, y, :]
    rows, cols = _crop(lung_plane, margin=10)
    mask_plane = None if mask is None else mask[flip, y, :][rows, cols]
    _overlay(ax, plane[rows, cols], lung_plane[rows, cols], mask_plane, spacing[2] / spacing[0])
    ax.set_title(f"Coronal (y = {y}); red: HU < {CLUSTER_THRESHOLD_HU}", fontsize=11)


def _crop(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns around the mask's non-zero part (whole plane when empty)."""
    if not np.any(mask):
        return slice(None), slice(None)
    spans = []
    for axis in (1, 0):
        present = np.flatnonzero(np.any(mask, axis=axis))
        spans.append(slice(max(int(present[0]) - margin, 0), int(present[-1]) + 1 + margin))
    return spans[0], spans[1]


def _histogram(ax, report: EmphysemaReport) -> None:
    histogram = report.histogram
    low, high = HISTOGRAM_RANGE_HU
    edges = np.arange(low, high + HISTOGRAM_BIN_HU, HISTOGRAM_BIN_HU)
    values = histogram.values
    counts, _ = np.histogram(values, bins=edges, weights=histogram.counts)
    percent = 100.0 * counts / max(histogram.total, 1)
    centres = (edges[:-1] + edges[1:]) / 2
    ax.fill_between(centres, percent, step="mid", color="#9aa5b1", alpha=0.6, linewidth=0)
    ax.plot(centres, percent, drawstyle="steps-mid", color="#52606d", linewidth=1.0)
    below = centres < CLUSTER_THRESHOLD_HU
    ax.fill_between(centres[below], percent[below], step="mid", color=LAA_COLOUR, alpha=0.7, linewidth=0)
    whole = report.region("whole").densitometry
    laa = {-950: whole.laa950_percent, -910: whole.laa910_percent, -856: whole.laa856_percent}
    top = float(percent.max()) if percent.size else 1.0
    for threshold in LAA_THRESHOLDS_HU:
        ax.axvline(threshold, color=THRESHOLD_COLOURS[threshold], linewidth=1.5, linestyle="-",
                   label=f"LAA{threshold}: {_fmt(laa[threshold], '.1f')} %")
    if whole.perc15_hu is not None:
        ax.axvline(whole.perc15_hu, color="#1f4e79", linewidth=1.8, linestyle="--",
                   label=f"Perc15: {whole.perc15_hu:.0f} HU")
    if whole.mean_hu is not None:
        ax.axvline(whole.mean_hu, color="#3e4c59", linewidth=1.0, linestyle=":", label=f"mean: {whole.mean_hu:.0f} HU")
    ax.set_xlim(low, high)
    ax.set_ylim(0, top * 1.1)
    ax.set_xlabel("HU")
    ax.set_ylabel(f"% of lung voxels per {HISTOGRAM_BIN_HU} HU")
    outside = 100.0 - 100.0 * float(counts.sum()) / max(histogram.total, 1)
    ax.set_title(f"Lung HU histogram ({outside:.1f} % of lung voxels above {high} HU not shown)", fontsize=11)
    ax.legend(loc="upper right", fontsize=10, framealpha=0.9)
    ax.grid(alpha=0.25)


def _zone_bars(ax, report: EmphysemaReport) -> None:
    x = np.arange(len(THIRDS))
    with_mask = report.region("whole").mask is not None
    width = 0.2 if with_mask else 0.38
    series = [(side, "laa", SIDE_COLOURS[side], None) for side in SIDES]
    if with_mask:
        series += [(side, "mask", SIDE_COLOURS[side], "//") for side in SIDES]
    for i, (side, kind, colour, hatch) in enumerate(series):
        values = []
        for third in THIRDS:
            stats = report.region(f"{side}_{third}")
            value = stats.densitometry.laa950_percent if kind == "laa" else stats.mask.percent_of_region  # type: ignore[union-attr]
            values.append(np.nan if value is None else value)
        offset = (i - (len(series) - 1) / 2) * width
        whole_side = report.region(side)
        overall = whole_side.densitometry.laa950_percent if kind == "laa" else whole_side.mask.percent_of_region  # type: ignore[union-attr]
        label = f"{side} {'%LAA-950' if kind == 'laa' else 'mask %'} (lung: {_fmt(overall, '.1f')})"
        bars = ax.bar(x + offset, values, width, color=colour if hatch is None else "white", edgecolor=colour,
                      hatch=hatch, label=label)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in values], fontsize=9, padding=2)
    ax.set_xticks(x, [t.capitalize() for t in THIRDS])
    ax.set_ylabel("% of zone lung volume")
    ax.set_title("%LAA-950 by zone (equal-volume thirds)", fontsize=11)
    ax.legend(fontsize=9, frameon=False, loc="upper right")
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.25)


def _cluster_distribution(ax, report: EmphysemaReport) -> None:
    clusters = report.clusters
    ax.set_title("LAA-950 clusters (6-connected)", fontsize=11)
    ax.set_xlabel("cluster size s (mL)")
    ax.set_ylabel("number of clusters >= s")
    if clusters is None or clusters.n_clusters == 0:
        ax.text(0.5, 0.5, "no LAA-950 clusters", transform=ax.transAxes, ha="center", va="center")
        return
    sizes = clusters.sizes_ml
    ax.loglog(sizes[::-1], np.arange(1, sizes.size + 1), drawstyle="steps-post", color="#52606d", linewidth=1.2,
              label=f"{clusters.n_clusters} clusters, {clusters.total_ml:.1f} mL")
    fit = clusters.power_law
    if fit is not None:
        s = np.geomspace(fit.min_ml, fit.max_ml, 20)
        ax.loglog(s, 10 ** (fit.intercept - fit.d * np.log10(s)), color=LAA_COLOUR, linewidth=2,
                  label=f"fit: D = {fit.d:.2f} (R² {fit.r2:.2f})")
    ax.axvline(clusters.large_threshold_ml, color="#3e4c59", linestyle=":", linewidth=1,
               label=f"large >= {clusters.large_threshold_ml:.2f} mL: {clusters.n_large}")
    ax.legend(fontsize=9, frameon=False, loc="upper right")
    ax.grid(alpha=0.25, which="both")
