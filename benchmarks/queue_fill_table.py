"""Expected DrasCLR queue fill against cohort size and training length, and the queue size that
each cohort can fill (the table in docs/pretraining.md).

Uses the same planner as ``drasclr pretrain`` (``plan.json``, ``--plan``), with every landmark
valid for every scan of the cohort (real scans lose some landmarks to partial coverage: fill is
then a little lower). Nothing is trained; it runs in seconds.

Usage:
  python benchmarks/queue_fill_table.py --out benchmarks/results/queue_fill_table.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from drasclr_monailabel.ssl.queue_plan import plan_queue_fill
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler
from drasclr_monailabel.utils.atomic import write_json

LANDMARKS = 581  # the reference atlas
# (name, scans, global batch, run length in epochs or steps)
SETTINGS = [
    ("demo recipe, 8 scans, 120 steps", 8, 4, {"steps": 120}),
    ("label-efficiency pretraining, 16 scans, 600 steps", 16, 4, {"steps": 600}),
    ("16 scans, 20 epochs, batch 8", 16, 8, {"epochs": 20}),
    ("100 scans, 20 epochs, batch 32", 100, 32, {"epochs": 20}),
    ("1,000 scans, 20 epochs, batch 128", 1000, 128, {"epochs": 20}),
    ("9,000 scans (paper), 20 epochs, batch 128", 9000, 128, {"epochs": 20}),
]
QUEUE_SIZES = (16, 64, 256, 1024, 4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (the markdown table is printed)")
    args = parser.parse_args(argv)
    rows = []
    for name, scans, batch, length in SETTINGS:
        sampler = LandmarkBatchSampler(np.ones((scans, LANDMARKS), dtype=bool), batch_size=batch)
        steps = length.get("steps") or length["epochs"] * sampler.batches_per_epoch
        fills = {}
        for size in QUEUE_SIZES:
            plan = plan_queue_fill(sampler.keys_per_landmark_epoch, size, steps, sampler.batches_per_epoch)
            fills[str(size)] = plan.summary()["median_fill_at_end"]
        rows.append({"setting": name, "scans": scans, "global_batch": batch, "steps": steps,
                     "keys_per_landmark": round(scans * steps / sampler.batches_per_epoch, 1),
                     "median_fill_at_end": fills, "recommended_queue_size": plan.recommended_queue_size()})
    write_json(args.out, {"landmarks": LANDMARKS, "rows": rows,
                          "command": " ".join(["python", "benchmarks/queue_fill_table.py", *(argv if argv is not None else sys.argv[1:])])})
    print("| setting | steps | keys per landmark | " + " | ".join(f"fill, K={k}" for k in QUEUE_SIZES) + " | recommended K |")
    print("| --- " * (4 + len(QUEUE_SIZES)) + "|")
    for row in rows:
        fills = " | ".join(f"{row['median_fill_at_end'][str(k)]:.0%}" for k in QUEUE_SIZES)
        print(f"| {row['setting']} | {row['steps']:,} | {row['keys_per_landmark']:,} | {fills} | {row['recommended_queue_size']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
