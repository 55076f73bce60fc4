"""bfloat16 against float32 for the segmentation network at inference: speed and what it changes.

Where the CPU computes bfloat16 natively (AVX512-BF16 / AMX, through oneDNN) the app's
``--conf infer_precision auto`` runs the network under bfloat16 autocast. This measures what that
buys and costs, with float32 (the baseline) in the same run:

1. one forward pass of two 64^3 windows (the app's pass), float32 / bfloat16, each also with
   channels-last 3D tensors (a lever the issue lists), median of ``--repeats``;
2. accuracy: the realistic emphysema benchmark's fold A at a small size (benchmarks/label_efficiency.py:
   two labelled synthetic scans from the real CTs lung1/lung2, one test scan from the held-out
   patient LIDC-IDRI-0001). Per seed a model is fine-tuned from scratch with the app's default
   round (4 epochs x 25 steps); the test scan's Dice against its true label is measured with the
   network in float32 and in bfloat16 (overlap 0, the app's CPU default), with the agreement of
   the two predictions;
3. whole-scan prediction time (prepared case, overlap 0) of the test scan in both precisions.

    python benchmarks/inference_precision.py --workdir /tmp/precision --out benchmarks/results/inference_precision_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import Size, fine_tuned_model, finetune_config, for_task, make_cohorts, prepare_cohort  # noqa: E402
from preprocess import machine_info  # noqa: E402

from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.segmentation.checkpoint import build_model  # noqa: E402
from drasclr_monailabel.segmentation.inference import WINDOW, window_probabilities, windows_per_pass  # noqa: E402
from drasclr_monailabel.segmentation.labels import BINARY  # noqa: E402
from drasclr_monailabel.segmentation.precision import native_bfloat16, network_precision  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json  # noqa: E402

SIZE = Size("real", train_scans=2, test_scans=1, unlabelled_scans=1, counts=(2,), seeds=(0, 1),
            finetune_epochs=4, steps_per_epoch=25, pretrain_steps=0, folds=("A",), overlap=0.0)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def forward_seconds(repeats: int, device: str) -> dict[str, float]:
    """Median seconds of one forward pass of two 64^3 windows, per precision and memory format."""
    torch.manual_seed(0)
    model, _ = build_model(device=device)
    model.eval()
    batch = torch.randn(windows_per_pass(WINDOW), 4, WINDOW, WINDOW, WINDOW, device=device)
    seconds = {}
    for layout in ("contiguous", "channels_last"):
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last_3d)
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        for name, dtype in PRECISIONS.items():
            times = []
            with torch.inference_mode(), network_precision(dtype, device):
                for _ in range(repeats + 1):  # the first pass warms oneDNN's kernel cache
                    clock = time.perf_counter()
                    model(batch)
                    times.append(time.perf_counter() - clock)
            seconds[f"{name}_{layout}"] = round(statistics.median(times[1:]), 4)
    return seconds


def test_scan_measures(model: torch.nn.Module, case: Any, device: str) -> dict[str, Any]:
    """Dice against the truth per precision, their agreement, and whole-case window-stage seconds."""
    predictions, seconds = {}, {}
    for name, dtype in PRECISIONS.items():
        clock = time.perf_counter()
        probabilities = window_probabilities(model, case, device, False, WINDOW, 0.0, None, dtype)
        seconds[name] = round(time.perf_counter() - clock, 2)
        predictions[name] = np.argmax(probabilities, axis=0) > 0
    truth = case.labels > 0
    return {
        "dice": {name: round(float(dice(p, truth)), 4) for name, p in predictions.items()},
        "agreement_dice": round(float(dice(predictions["float32"], predictions["bfloat16"])), 5),
        "emphysema_voxels": {name: int(p.sum()) for name, p in predictions.items()},
        "window_stage_seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the synthetic cohorts (reused on a rerun)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="forward passes per variant")
    args = parser.parse_args()
    load_before = os.getloadavg()

    forward = forward_seconds(args.repeats, args.device)
    cohorts = make_cohorts(SIZE, args.workdir, "A")
    train = for_task(prepare_cohort(cohorts["train"]), BINARY)
    test = for_task(prepare_cohort(cohorts["test"]), BINARY)[0]
    seeds = {}
    for seed in SIZE.seeds:
        model, _ = fine_tuned_model("scratch", None, train, SIZE.counts[0], finetune_config(SIZE, args.device, seed, count=SIZE.counts[0]))
        seeds[str(seed)] = test_scan_measures(model, test, args.device)
        print(f"seed {seed}: {seeds[str(seed)]}", file=sys.stderr)

    dice_change = [s["dice"]["bfloat16"] - s["dice"]["float32"] for s in seeds.values()]
    stage = [s["window_stage_seconds"]["float32"] / s["window_stage_seconds"]["bfloat16"] for s in seeds.values()]
    report = {
        "benchmark": "inference_precision",
        "command": f"python benchmarks/inference_precision.py --workdir {args.workdir} --out {args.out} --device {args.device}",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "native_bfloat16": native_bfloat16(args.device),
        "machine": {**machine_info(load_before), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "forward_two_64cube_windows_seconds": forward,
        "forward_speedup_bfloat16": round(forward["float32_contiguous"] / forward["bfloat16_contiguous"], 2),
        "forward_speedup_channels_last_float32": round(forward["float32_contiguous"] / forward["float32_channels_last"], 2),
        "test_scan": test.case_id,
        "seeds": seeds,
        "dice_change_bfloat16_minus_float32": [round(d, 4) for d in dice_change],
        "window_stage_speedup_bfloat16": [round(s, 2) for s in stage],
        "accuracy_goal_met": all(abs(d) <= 0.01 for d in dice_change),
    }
    write_json(args.out, report)
    print(f"forward: {forward}; Dice change {report['dice_change_bfloat16_minus_float32']}; "
          f"window stage x{report['window_stage_speedup_bfloat16']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
