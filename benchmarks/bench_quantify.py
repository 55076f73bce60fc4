"""Speed of emphysema quantification on a 512 x 512 x 400 chest CT, against a plain numpy baseline.

The scan is the thorax phantom rasterised at 0.78 x 0.78 x 0.8 mm with emphysema-like low-HU
blobs added to about a tenth of the lung (so that there are realistic numbers of LAA clusters).
The baseline, measured in the same run, is the straightforward implementation: one boolean mask
per region with ``np.percentile`` and threshold counts on the selected voxels, and connected
components on the full volume. Reported: median seconds of each and their ratio, plus the
pseudo-labels and the PNG report.

    python benchmarks/bench_quantify.py --out benchmarks/results/quantify.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
from scipy import ndimage

from drasclr_monailabel.data.phantom import make_thorax_phantom
from drasclr_monailabel.emphysema import laa_pseudo_labels, lung_zones, quantify
from drasclr_monailabel.emphysema.clusters import label_clusters
from drasclr_monailabel.emphysema.quantify import LAA_THRESHOLDS_HU
from drasclr_monailabel.emphysema.regions import REGIONS
from drasclr_monailabel.emphysema.report import render_png
from drasclr_monailabel.utils.atomic import write_json


def build_scan(seed: int = 0):
    case = make_thorax_phantom(spacing=(400 / 512, 400 / 512, 0.8), seed=seed, z_range_mm=(-140.0, 180.0))
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.normal(size=case.lungs.shape).astype(np.float32), sigma=2.0)
    low = (blobs > np.quantile(blobs[case.lungs > 0], 0.9)) & (case.lungs > 0)
    hu = case.volume.hu.copy()
    hu[low] = np.minimum(hu[low], -955 - rng.integers(0, 40, size=int(low.sum()))).astype(np.int16)
    return replace(case.volume, hu=hu), case.lungs


def baseline(volume, lungs) -> None:
    """Per-region boolean masks and numpy reductions; components on the whole volume."""
    codes = lung_zones(lungs, volume.spacing, volume.direction).codes
    for zone_codes in REGIONS.values():
        values = volume.hu[np.isin(codes, zone_codes)]
        np.percentile(values, 15)
        values.mean()
        for threshold in LAA_THRESHOLDS_HU:
            np.count_nonzero(values < threshold)
    label_clusters((volume.hu < -950) & (lungs > 0))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    volume, lungs = build_scan()
    report = quantify(volume, lungs)
    result = {
        "size_xyz": list(volume.shape_xyz),
        "spacing_mm": list(volume.spacing),
        "lung_voxels": int(np.count_nonzero(lungs)),
        "laa950_percent": report.region("whole").densitometry.laa950_percent,
        "n_clusters": report.clusters.n_clusters,
        "quantify_s": timed(lambda: quantify(volume, lungs), args.repeats),
        "quantify_without_clusters_s": timed(lambda: quantify(volume, lungs, clusters=False), args.repeats),
        "baseline_s": timed(lambda: baseline(volume, lungs), args.repeats),
        "pseudo_labels_s": timed(lambda: laa_pseudo_labels(volume, lungs), 1),
        "render_png_s": timed(lambda: render_png(report, volume, lungs), 1),
    }
    result["speedup_vs_baseline"] = result["baseline_s"] / result["quantify_s"]
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
