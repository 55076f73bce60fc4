"""The learning curve of one DrasCLR pretraining run, from its TensorBoard scalars, as window means.

Single logging steps are noisy (one landmark per batch); means over windows of steps show whether
the contrastive task still improves, against its chance level logged beside it (a query that
ranks its positive at random among the same negatives):

    python benchmarks/pretraining_curve.py RUN_FOLDER --window 1000 --out curve.json

RUN_FOLDER is the ``--out`` of ``drasclr pretrain`` (it holds ``tensorboard/``). Prints a table
and writes ``{"window", "run", "tags", "windows": [{"first_step", "last_step", <tag>: mean}]}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from drasclr_monailabel.utils.atomic import write_json

TAGS = ("train/loss_local", "train/loss_local_chance", "train/acc_local", "train/acc_local_chance",
        "train/loss_local_batch", "train/loss_local_batch_chance", "train/acc_local_batch", "train/acc_local_batch_chance",
        "train/loss_neighbour", "train/queue_fill", "train/lr")
"""Scalars summarised (those a run does not log, e.g. the neighbour loss at weight 0, are left out)."""


def read_scalars(tensorboard: Path, tags: tuple[str, ...] = TAGS) -> dict[str, np.ndarray]:
    """Every scalar of ``tags`` the event files hold: tag -> float (n, 2) of (step, value)."""
    events = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags()["scalars"])
    return {tag: np.array([(e.step, e.value) for e in events.Scalars(tag)], dtype=np.float64)
            for tag in tags if tag in logged}


def window_means(scalars: dict[str, np.ndarray], window: int) -> list[dict[str, float]]:
    """Mean of each scalar over consecutive windows of ``window`` steps, from step 0 to the last
    logged step; a window where a scalar has no point has no entry for it."""
    last = max(int(series[:, 0].max()) for series in scalars.values())
    rows = []
    for first in range(0, last + 1, window):
        row: dict[str, float] = {"first_step": first, "last_step": first + window - 1}
        for tag, series in scalars.items():
            inside = (series[:, 0] >= first) & (series[:, 0] < first + window)
            if inside.any():
                row[tag] = float(series[inside, 1].mean())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="pretraining run folder (holds tensorboard/)")
    parser.add_argument("--window", type=int, default=1000, help="steps per window (default 1000)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window must be at least 1, got {args.window}")
    tensorboard = args.run / "tensorboard"
    if not tensorboard.is_dir():
        print(f"{args.run}: no tensorboard/ folder; give the --out folder of 'drasclr pretrain'", file=sys.stderr)
        return 2
    scalars = read_scalars(tensorboard)
    if not scalars:
        print(f"{tensorboard}: no training scalars logged", file=sys.stderr)
        return 2
    rows = window_means(scalars, args.window)
    names = list(scalars)
    print("steps".ljust(13), *(name.removeprefix("train/") for name in names))
    for row in rows:
        print(f"{row['first_step']}-{row['last_step']}".ljust(13), *(f"{row[n]:.3f}" if n in row else "-" for n in names))
    write_json(args.out, {"window": args.window, "run": str(args.run), "tags": names, "windows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
