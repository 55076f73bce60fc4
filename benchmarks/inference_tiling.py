"""Where the inference windows go: the whole 1 mm grid (ours) against the lungs' bounding box only.

The 1 mm grid carries a 28 mm margin around the lungs for pretraining's patch shifts; sliding the
64^3 windows over the lungs' bounding box instead runs fewer windows (60 instead of 79 that hold
lung on LIDC-IDRI-0001 at overlap 0). This measures what that saves and what it costs, on the
setting of benchmarks/inference_precision.py (fold A at a small size: models fine-tuned from scratch
with the app's default round on two labelled synthetic scans from lung1/lung2, the test scan from
the held-out patient LIDC-IDRI-0001), per seed, at overlap 0 (CPU default) and 0.25 (GPU default),
with the network in the app's format on this machine. The box variant is the same windowing run
on the case cropped to the box (widened to one window where the lungs are narrower).

    python benchmarks/inference_tiling.py --workdir /tmp/precision --out benchmarks/results/inference_tiling_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_precision import SIZE  # noqa: E402
from label_efficiency import fine_tuned_model, finetune_config, for_task, make_cohorts, prepare_cohort  # noqa: E402
from preprocess import machine_info  # noqa: E402

from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.segmentation.case import PreparedCase  # noqa: E402
from drasclr_monailabel.segmentation.inference import WINDOW, window_probabilities  # noqa: E402
from drasclr_monailabel.segmentation.labels import BINARY  # noqa: E402
from drasclr_monailabel.segmentation.precision import DTYPES, resolve_precision  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json  # noqa: E402

SEEDS = (0, 1, 2)
OVERLAPS = (0.0, 0.25)


def lung_box(lungs: np.ndarray, window: int) -> tuple[slice, ...]:
    """The lungs' bounding box (z, y, x), widened, centred and within the grid, to one window per axis."""
    box = []
    for axis, size in enumerate(lungs.shape):
        found = np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = int(found[0]), int(found[-1]) + 1
        missing = max(window - (high - low), 0)
        low = max(0, min(low - missing // 2, size - max(window, high - low)))
        box.append(slice(low, min(size, max(high, low + window))))
    return tuple(box)


def emphysema(model: torch.nn.Module, case: PreparedCase, overlap: float, precision: torch.dtype, box: bool) -> np.ndarray:
    """Binary emphysema (Z, Y, X) on the case's grid, windows over the whole grid or the lung box."""
    if not box:
        return np.argmax(window_probabilities(model, case, "cpu", False, WINDOW, overlap, None, precision), axis=0) > 0
    region = lung_box(case.lungs, WINDOW)
    inside = window_probabilities(model, case.cropped(region), "cpu", False, WINDOW, overlap, None, precision)
    labels = np.zeros(case.lungs.shape, dtype=bool)
    labels[region] = np.argmax(inside, axis=0) > 0
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the synthetic cohorts (shared with inference_precision.py)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    load_before = os.getloadavg()
    precision_name = resolve_precision("auto", "cpu")
    cohorts = make_cohorts(SIZE, args.workdir, "A")
    train = for_task(prepare_cohort(cohorts["train"]), BINARY)
    test = for_task(prepare_cohort(cohorts["test"]), BINARY)[0]
    truth = test.labels > 0
    seeds: dict[str, Any] = {}
    for seed in SEEDS:
        model, _ = fine_tuned_model("scratch", None, train, SIZE.counts[0], finetune_config(SIZE, "cpu", seed, count=SIZE.counts[0]))
        runs = {}
        for overlap in OVERLAPS:
            for tiling in ("whole_grid", "lung_box"):
                clock = time.perf_counter()
                predicted = emphysema(model, test, overlap, DTYPES[precision_name], tiling == "lung_box")
                runs[f"{tiling}_overlap_{overlap}"] = {"dice": round(float(dice(predicted, truth)), 4),
                                                       "seconds": round(time.perf_counter() - clock, 2)}
        seeds[str(seed)] = runs
        print(f"seed {seed}: {runs}", file=sys.stderr)
    change = {f"overlap_{o}": [round(s[f"lung_box_overlap_{o}"]["dice"] - s[f"whole_grid_overlap_{o}"]["dice"], 4)
                               for s in seeds.values()] for o in OVERLAPS}
    write_json(args.out, {
        "benchmark": "inference_tiling",
        "command": f"python benchmarks/inference_tiling.py --workdir {args.workdir} --out {args.out}",
        "device": "cpu", "precision": precision_name, "machine": machine_info(load_before),
        "test_scan": test.case_id, "lung_box": [[s.start, s.stop] for s in lung_box(test.lungs, WINDOW)],
        "grid": list(test.lungs.shape), "seeds": seeds, "dice_change_lung_box_minus_whole_grid": change,
    })
    print(f"Dice change lung box - whole grid: {change}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
