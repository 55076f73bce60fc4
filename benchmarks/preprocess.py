"""Seconds per stage and peak memory of `drasclr preprocess` for one scan, with same-run baselines.

Cases:
- ``real``: the real sample chest CT lung2 (pyradiomics, 512 x 512 x 61, 0.63 x 0.63 x 5 mm),
  fetched once by ``drasclr sample-data``;
- ``full``: the real full chest CT LIDC-IDRI-0001 (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, apices
  to kidneys; sample data), whose goal is 8 s on 2 cores;
- ``large``: a full-chest phantom resampled to 512 x 512 x 400 at 0.7 x 0.7 x 0.8 mm (about
  200 MB of int16, the size of a thin-slice clinical chest CT), written as NIfTI first.

Each case runs in a fresh process (so its peak resident memory is that scan's) through the same
stages as ``drasclr preprocess``: read, lung mask, registration, landmarks, resampling to 1 mm,
cache write. In the same process, two baselines are measured on the same scan:
- registration at full resolution: the same optimiser on the 1 mm grid with 10% of the voxels
  sampled at every level (instead of a 2 mm grid and 10,000 random samples per level);
- cubic B-spline image resampling (the DrasCLR reference) instead of linear.
Ratios are baseline seconds / our seconds. The goals: at most 8 s for the real full chest CT and
20 s for the large thin-slice one. On a
shared machine the wall times grow with the load (recorded); ``cpu_seconds_total`` (CPU time of
all threads, without disk waits) is close to the wall time the same scan takes on an idle machine.

    python benchmarks/preprocess.py --out benchmarks/results/preprocess.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_SECONDS = 20.0
FULL_CHEST_GOAL_SECONDS = 8.0
LARGE_SIZE = (512, 512, 400)
LARGE_SPACING = (0.7, 0.7, 0.8)


def make_large_scan(path: Path) -> None:
    """A 1 mm phantom resampled (linear) to 512 x 512 x 400 at 0.7 x 0.7 x 0.8 mm, with fresh noise."""
    import numpy as np
    import SimpleITK as sitk

    from drasclr_monailabel.data.phantom import make_thorax_phantom

    extent = [n * s for n, s in zip(LARGE_SIZE, LARGE_SPACING)]
    case = make_thorax_phantom(spacing=(1.0, 1.0, 1.0), seed=99, noise_hu=0.0, fov_mm=extent[0],
                               z_range_mm=(-140.0, -140.0 + extent[2]))
    grid = sitk.Image(list(LARGE_SIZE), sitk.sitkInt16)
    grid.SetSpacing(LARGE_SPACING)
    grid.SetOrigin([-extent[0] / 2 + LARGE_SPACING[0] / 2, -extent[1] / 2 + LARGE_SPACING[1] / 2, -140.0 + LARGE_SPACING[2] / 2])
    fine = sitk.Resample(case.volume.to_sitk(), grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(fine)
    array += np.random.default_rng(0).normal(0.0, 20.0, array.shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.rint(array), -1024, 3071).astype(np.int16))
    image.CopyInformation(grid)
    sitk.WriteImage(image, str(path), useCompression=True)


def case_inputs(cases: list[str], folder: Path) -> dict[str, str]:
    """Paths of the benchmark scans by case name: ``real`` (sample CT lung2), ``full`` (LIDC-IDRI-0001),
    ``large`` (written into ``folder``)."""
    from drasclr_monailabel.data.sample_data import sample_path

    inputs = {}
    if "real" in cases:
        inputs["real"] = str(sample_path("lung2_image"))
    if "full" in cases:
        inputs["full"] = str(sample_path("lidc0001_image"))
    if "large" in cases:
        inputs["large"] = str(folder / "large.nii.gz")
        make_large_scan(Path(inputs["large"]))
    return inputs


def in_fresh_process(function: Any, *arguments: Any) -> Any:
    """``function(*arguments)`` in a new (spawned) process, so its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def machine_info(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """CPU count, platform and the load average before/after: other jobs on a shared machine slow
    every stage alike, so ratios stay meaningful while wall times do not."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def write_report(path: str, report: dict[str, Any]) -> None:
    """Add ``large_meets_goal`` / ``full_chest_meets_goal`` for the cases that ran, then write the JSON atomically."""
    from drasclr_monailabel.utils.atomic import write_json

    if "large" in report["cases"]:
        report["large_meets_goal"] = report["cases"]["large"]["seconds"]["total"] <= report["goal_seconds_per_full_ct"]
    if "full" in report["cases"]:
        full = report["cases"]["full"]
        report["full_chest_meets_goal"] = {"wall": full["seconds"]["total"] <= FULL_CHEST_GOAL_SECONDS,
                                           "cpu": full["cpu_seconds_total"] <= FULL_CHEST_GOAL_SECONDS}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


def peak_resident_mb() -> float:
    """Peak resident memory of this process (VmHWM). Unlike ru_maxrss it is not inherited from the
    parent that started the process, which built the large phantom."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure_case(path: str, out_dir: str) -> dict[str, Any]:
    """Run one scan through the pipeline and the baselines (called in a fresh process)."""
    import numpy as np
    import SimpleITK as sitk

    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.anatomy.cache import write_scan
    from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
    from drasclr_monailabel.anatomy.pipeline import PipelineSettings, cache_grid, MARGIN_MM, preprocess_volume, resample_image
    from drasclr_monailabel.anatomy.registration import RegistrationSettings, register_to_atlas
    from drasclr_monailabel.io.readers import read_ct

    atlas = load_default_atlas()
    settings = PipelineSettings()
    started = time.perf_counter()
    cpu_started = time.process_time()
    clock = time.perf_counter()
    volume = read_ct(path)
    read_s = time.perf_counter() - clock
    scan = preprocess_volume(volume, atlas, settings)
    qa = write_scan(out_dir, "scan", path, scan, atlas, settings, {"read": read_s, **scan.timings})
    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    peak_mb = peak_resident_mb()

    # Baselines on the same scan (after the pipeline, so they do not inflate its peak memory).
    ct = volume.canonical()
    labels = lung_labels_working_grid(ct)
    full_resolution = RegistrationSettings(spacing_mm=1.0, sampling_fraction=0.1)
    clock = time.perf_counter()
    baseline_registration = register_to_atlas(labels, atlas.lungs, full_resolution)
    baseline_registration_s = time.perf_counter() - clock
    clock = time.perf_counter()
    ours_registration = register_to_atlas(labels, atlas.lungs, settings.registration)
    ours_registration_s = time.perf_counter() - clock
    grid = cache_grid(labels, MARGIN_MM)
    resample = {}
    for method in ("linear", "bspline"):
        clock = time.perf_counter()
        resample[method] = resample_image(ct, grid, method)
        resample[f"{method}_s"] = time.perf_counter() - clock
    difference = np.abs(resample["linear"].astype(np.int32) - resample["bspline"].astype(np.int32))
    return {
        "source": path,
        "size_xyz": list(volume.shape_xyz),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "cache_size_xyz": qa["grid"]["size"],
        "seconds": {**qa["timings_s"], "total": round(total, 2)},
        # CPU time of all threads: about the wall time of the same scan on an otherwise idle machine.
        "cpu_seconds_total": round(cpu_total, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "registration_dice": qa["registration"]["dice"],
        "landmarks_valid": qa["landmarks"]["n_valid"],
        "baselines": {
            "registration_full_resolution": {
                "seconds": round(baseline_registration_s, 2), "dice": round(baseline_registration.dice, 4),
                "iterations": baseline_registration.iterations,
                "ours_seconds": round(ours_registration_s, 2), "ours_dice": round(ours_registration.dice, 4),
                "ratio": round(baseline_registration_s / ours_registration_s, 2),
            },
            "resample_bspline": {
                "seconds": round(resample["bspline_s"], 2), "ours_linear_seconds": round(resample["linear_s"], 2),
                "ratio": round(resample["bspline_s"] / resample["linear_s"], 2),
                "median_abs_difference_hu": float(np.median(difference)),
                "p99_abs_difference_hu": float(np.percentile(difference, 99)),
            },
        },
        "threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--cases", nargs="+", choices=["real", "full", "large"], default=["real", "full", "large"])
    args = parser.parse_args()

    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in case_inputs(args.cases, Path(tmp)).items():
            results[name] = in_fresh_process(measure_case, path, str(Path(tmp) / f"cache-{name}"))
            print(f"{name}: {json.dumps(results[name]['seconds'])}, cpu {results[name]['cpu_seconds_total']} s, "
                  f"peak {results[name]['peak_rss_mb']} MB", file=sys.stderr)
    report = {
        "benchmark": "preprocess",
        "command": " ".join(["python", "benchmarks/preprocess.py", *sys.argv[1:]]),
        "machine": machine_info(load_before),
        "goal_seconds_per_full_ct": GOAL_SECONDS,
        "goal_seconds_real_full_chest": FULL_CHEST_GOAL_SECONDS,
        "cases": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
