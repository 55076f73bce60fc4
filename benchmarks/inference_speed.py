"""Whole-CT emphysema inference: seconds per stage and peak memory, with a same-run baseline.

Cases (each in a fresh process, so its peak resident memory is that scan's):
- ``full``: the real full chest CT LIDC-IDRI-0001 (pylidc, 512 x 512 x 133, 2.5 mm slices);
- ``real``: the real sample chest CT lung2 (pyradiomics, 512 x 512 x 61, 0.63 x 0.63 x 5 mm);
- ``large``: a full-chest phantom at 512 x 512 x 400, 0.7 x 0.7 x 0.8 mm (benchmarks/preprocess.py).

Ours is :func:`~drasclr_monailabel.segmentation.inference.predict_volume` as the app runs it
(network in the format ``--precision`` resolves to, as ``--conf infer_precision`` does):
prepare (lung mask, registration, atlas coordinate map), 64^3 windows with 25% overlap on the 1 mm
lung grid, only windows that contain lung, each built from the case, two windows per forward
pass, back to the input grid, quantification; and the same with overlap 0 (the app's
``infer_overlap`` CPU option). The baseline, timed on the same prepared case after the model has
run, is MONAI's sliding-window inference over every window of the whole-grid network input (the
first version of this code), two windows per pass. The JSON reports
the ratio baseline/ours of the window stage and checks that both give the same probabilities
inside the lung. The goal is 30 s per full chest CT on 2 CPU
cores. The network has random weights: speed does not depend on them.

Second baseline, what a MONAI Label user would otherwise run (issue 18): a radiology-app-style
MONAI UNet (channels 16-256, 2 residual units, batch norm, random weights) on the same file, load
to save in its own fresh process: read, resample to 1.5 mm, scale intensities, MONAI sliding
window with a 96^3 ROI (overlap 0.25, one window per pass), argmax, nearest-neighbour back to
the scan's grid, write the label. Ours load to save is read + prepare + predict at overlap 0
(the app's CPU default) + write the label. Both are timed warm (the second call in the
process); ``load_to_save_ratio`` is ours / UNet (goal at most 1.0).

    python benchmarks/inference_speed.py --out benchmarks/results/inference_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import case_inputs, in_fresh_process, machine_info, peak_resident_mb  # noqa: E402

GOAL_SECONDS = 30.0


def measure_case(path: str, device: str, precision_name: str) -> dict[str, Any]:
    """Time one scan through inference and the baseline window stage (called in a fresh process);
    ``precision_name`` is the network's format in the whole-scan predictions (the window-stage
    comparison runs in float32 on both sides)."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from drasclr_monailabel.io.readers import read_ct
    from drasclr_monailabel.segmentation.case import network_input, prepare_case
    from drasclr_monailabel.segmentation.checkpoint import build_model
    from drasclr_monailabel.segmentation.inference import LungWindowPredictor, lung_window_logits, predict_volume
    from drasclr_monailabel.segmentation.precision import DTYPES

    torch.manual_seed(0)
    model, _ = build_model(device=device)
    model.eval()
    peak_after = {"imports_and_model": peak_resident_mb()}  # where the peak comes from, stage by stage
    clock = time.perf_counter()
    volume = read_ct(path)
    read_s = time.perf_counter() - clock
    peak_after["read"] = peak_resident_mb()
    clock = time.perf_counter()
    case = prepare_case(volume)
    prepare_s = time.perf_counter() - clock
    peak_after["prepare"] = peak_resident_mb()

    clock = time.perf_counter()
    precision = DTYPES[precision_name]
    prediction = predict_volume(model, volume, device, case=case, precision=precision)
    predict_s = time.perf_counter() - clock
    peak_mb = peak_resident_mb()

    clock = time.perf_counter()
    prediction_overlap0 = predict_volume(model, volume, device, overlap=0.0, case=case, precision=precision)
    predict_overlap0_s = time.perf_counter() - clock
    save_s = write_label_seconds(prediction_overlap0.labels, volume)

    # Window stage alone, MONAI's sliding window on both sides: lung windows only, each built from the
    # case (ours), vs every window of the whole-grid network input.
    counter = LungWindowPredictor(_NoNetwork(model.num_classes), case, 64)
    lung_window_logits(counter, case, 64, 0.25, 2, device)
    clock = time.perf_counter()
    ours_logits = lung_window_logits(LungWindowPredictor(model, case, 64), case, 64, 0.25, 2, device)
    ours_windows_s = time.perf_counter() - clock
    with torch.inference_mode():
        image = torch.from_numpy(network_input(case))[None].to(device)
        clock = time.perf_counter()
        logits = sliding_window_inference(image, (64,) * 3, 2, model, overlap=0.25, mode="gaussian", padding_mode="replicate")
        baseline_windows_s = time.perf_counter() - clock
    ours = torch.softmax(ours_logits[0].float(), dim=0).cpu().numpy()
    baseline = torch.softmax(logits[0].float(), dim=0).cpu().numpy()
    lung = case.lungs > 0
    stored = stored_prepare_seconds(path)
    return {
        "source": path,
        "size_xyz": list(volume.shape_xyz),
        "spacing_mm": [round(s, 3) for s in volume.spacing],
        "lung_grid_zyx": list(case.lungs.shape),
        "windows": {"total": counter.windows, "with_lung": counter.windows - counter.skipped},
        "seconds": {"prepare": round(prepare_s, 2), "predict_after_prepare": round(predict_s, 2),
                    "total": round(prepare_s + predict_s, 2)},
        "overlap_0": {"predict_after_prepare": round(predict_overlap0_s, 2), "total": round(prepare_s + predict_overlap0_s, 2),
                      "load_to_save": round(read_s + prepare_s + predict_overlap0_s + save_s, 2),
                      "read": round(read_s, 2), "save": round(save_s, 2),
                      "load_to_save_stored": round(read_s + stored["hit"] + predict_overlap0_s + save_s, 2)},
        "scan_store_seconds": stored,
        "window_stage": {"ours_seconds": round(ours_windows_s, 2), "baseline_seconds": round(baseline_windows_s, 2),
                         "ratio_baseline_over_ours": round(baseline_windows_s / ours_windows_s, 2),
                         "max_abs_probability_difference_in_lung": float(np.abs(ours[:, lung] - baseline[:, lung]).max())},
        "emphysema_voxels": int((prediction.labels > 0).sum()),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_rss_mb_after": {**{stage: round(value, 1) for stage, value in peak_after.items()}, "predict": round(peak_mb, 1)},
        "torch_threads": torch.get_num_threads(),
        "precision": precision_name,
    }


def stored_prepare_seconds(path: str) -> dict[str, float]:
    """Prepare time with the app's scan store: ``miss`` (pipeline + writing the scan) and ``hit``
    (reading it back, then the atlas coordinates and the native-grid lung mask), each from a fresh read."""
    from drasclr_monailabel.anatomy.scan_store import ScanStore
    from drasclr_monailabel.io.readers import read_ct
    from drasclr_monailabel.segmentation.case import prepare_case

    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        store = ScanStore(folder)
        for kind in ("miss", "hit"):
            volume = read_ct(path)
            clock = time.perf_counter()
            prepare_case(volume, scans=store)
            seconds[kind] = round(time.perf_counter() - clock, 2)
    return seconds


def write_label_seconds(labels: Any, volume: Any) -> float:
    """Seconds to write ``labels`` (uint8 (Z, Y, X) on ``volume``'s grid) as a compressed NIfTI, as the app saves a result."""
    from drasclr_monailabel.tasks.labels import Grid, write_label

    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        write_label(Path(folder) / "label.nii.gz", labels, Grid(volume.shape_xyz, volume.spacing, volume.origin, volume.direction))
    return time.perf_counter() - clock


def measure_monai_unet(path: str, device: str) -> dict[str, Any]:
    """Load-to-save seconds of a radiology-app-style MONAI UNet on one scan (called in a fresh process);
    the second of two runs (warm), and the peak resident memory."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from drasclr_monailabel.io.readers import read_ct

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                   num_res_units=2, norm="batch").to(device).eval()
    target_mm = 1.5

    def load_to_save() -> tuple[float, tuple[int, ...]]:
        clock = time.perf_counter()
        volume = read_ct(path)
        hu = torch.from_numpy(volume.hu.astype(np.float32))[None, None]
        spacing_zyx = volume.spacing[::-1]
        size = [max(1, round(n * s / target_mm)) for n, s in zip(volume.hu.shape, spacing_zyx)]
        with torch.inference_mode():
            image = F.interpolate(hu, size=size, mode="trilinear", align_corners=False)
            image = ((image + 1000.0) / 1500.0).clamp(0.0, 1.0).to(device)
            logits = sliding_window_inference(image, (96,) * 3, 1, network, overlap=0.25)
            labels = logits.argmax(dim=1, keepdim=True).float()
            labels = F.interpolate(labels, size=list(volume.hu.shape), mode="nearest")[0, 0].to(torch.uint8).cpu().numpy()
        write_label_seconds(labels, volume)
        return time.perf_counter() - clock, tuple(size)

    load_to_save()
    seconds, grid = load_to_save()
    return {"load_to_save": round(seconds, 2), "grid_zyx": list(grid), "peak_rss_mb": round(peak_resident_mb(), 1)}


class _NoNetwork:
    """Stands in for the network when only the windows are counted: zero logits, no work."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, windows: Any) -> Any:
        return windows.new_zeros((len(windows), self.num_classes, *windows.shape[2:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--cases", nargs="+", choices=["full", "real", "large"], default=["full", "real", "large"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the network's format in our whole-scan predictions (auto: as the app picks it)")
    args = parser.parse_args()
    from drasclr_monailabel.segmentation.precision import resolve_precision

    precision = resolve_precision(args.precision, args.device)

    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in case_inputs(args.cases, Path(tmp)).items():
            results[name] = in_fresh_process(measure_case, path, args.device, precision)
            unet = in_fresh_process(measure_monai_unet, path, args.device)
            results[name]["monai_unet"] = unet
            results[name]["load_to_save_ratio"] = round(results[name]["overlap_0"]["load_to_save"] / unet["load_to_save"], 2)
            results[name]["load_to_save_ratio_stored"] = round(results[name]["overlap_0"]["load_to_save_stored"] / unet["load_to_save"], 2)
            print(f"{name}: {json.dumps(results[name]['seconds'])}, windows {results[name]['windows']}, "
                  f"window stage x{results[name]['window_stage']['ratio_baseline_over_ours']}, "
                  f"peak {results[name]['peak_rss_mb']} MB; load to save {results[name]['overlap_0']['load_to_save']} s "
                  f"vs MONAI UNet {unet['load_to_save']} s (x{results[name]['load_to_save_ratio']}, "
                  f"x{results[name]['load_to_save_ratio_stored']} with the scan stored, "
                  f"UNet peak {unet['peak_rss_mb']} MB)", file=sys.stderr)
    import torch

    from drasclr_monailabel.utils.atomic import write_json

    report = {
        "benchmark": "inference_speed",
        "command": (f"python benchmarks/inference_speed.py --out {args.out} --device {args.device} --cases {' '.join(args.cases)} "
                    f"--precision {args.precision}"),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "machine": machine_info(load_before),
        "goal_seconds_per_full_ct": GOAL_SECONDS,
        "cases": results,
    }
    for name in ("large", "full"):  # overlap 0 is what the app runs on a CPU (infer_overlap's CPU default)
        if name in results:
            report[f"{name}_meets_goal_overlap_0"] = results[name]["overlap_0"]["total"] <= GOAL_SECONDS
    if "full" in results:
        report["full_load_to_save_at_most_monai_unet"] = results["full"]["load_to_save_ratio"] <= 1.0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
