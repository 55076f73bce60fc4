"""Does the app's CPU inference default (window overlap 0) cost accuracy? One fine-tuned model,
evaluated with overlap 0.25 (the baseline) and 0 in the same run.

Uses the cohorts and pretrained encoder of ``benchmarks/label_efficiency.py --size medium``
(made, or reused when ``--workdir`` already holds them): the emphysema model is fine-tuned from
the pretrained encoder on ``--labelled`` training scans (synthetic emphysema in real CT lung1),
then the held-out scans (the same generator in real CT lung2) are predicted with both overlaps
as the app predicts (64^3 windows; each 32^3 block routed by its own location since
benchmarks/window_condition.py, one location per window before).
Reported per overlap: Dice against the true label on the 1 mm lung grid and seconds of the window
stage; and the Dice between the two predictions.

    python benchmarks/inference_overlap.py --workdir /tmp/le/work --out benchmarks/results/inference_overlap_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import SIZES, for_task, make_cohorts, predicted_emphysema, prepare_cohort, pretrain  # noqa: E402

from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.segmentation.checkpoint import build_model  # noqa: E402
from drasclr_monailabel.segmentation.labels import BINARY  # noqa: E402
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json  # noqa: E402

OVERLAPS = (0.25, 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--workdir", type=Path, required=True, help="label_efficiency.py --size medium work folder (made if empty)")
    parser.add_argument("--labelled", type=int, default=2, help="labelled training scans (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    size = SIZES["medium"]
    cohorts = make_cohorts(size, args.workdir)
    encoder = pretrain(size, cohorts["unlabelled"], args.workdir / "pretrain")
    train_cases = for_task(prepare_cohort(cohorts["train"]), BINARY)[: args.labelled]
    test_cases = for_task(prepare_cohort(cohorts["test"]), BINARY)

    torch.manual_seed(0)
    model, _ = build_model(["emphysema"], pretrained=encoder, device=args.device)
    config = FinetuneConfig(max_epochs=size.finetune_epochs, steps_per_epoch=size.steps_per_epoch, device=args.device, seed=0)
    finetune(model, train_cases, config, pretrained=True)

    per_case = []
    for case in test_cases:
        entry: dict = {"case": case.case_id}
        predictions = {}
        for overlap in OVERLAPS:
            clock = time.perf_counter()
            predictions[overlap] = predicted_emphysema(model, case, args.device, overlap)
            entry[f"seconds_overlap_{overlap}"] = round(time.perf_counter() - clock, 2)
            entry[f"dice_overlap_{overlap}"] = round(dice(predictions[overlap], case.labels > 0), 4)
        entry["dice_between_overlaps"] = round(dice(predictions[0.0], predictions[0.25]), 4)
        per_case.append(entry)
        print(entry, flush=True)
    result = {
        "benchmark": "inference_overlap",
        "command": " ".join(["python", "benchmarks/inference_overlap.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "labelled_scans": args.labelled,
        "encoder": str(encoder),
        "cases": per_case,
        "mean": {key: round(float(np.mean([c[key] for c in per_case])), 4)
                 for key in per_case[0] if key != "case"},
    }
    result["time_ratio_overlap_0.25_over_0"] = round(result["mean"]["seconds_overlap_0.25"] / result["mean"]["seconds_overlap_0.0"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(result["mean"], f"time ratio {result['time_ratio_overlap_0.25_over_0']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
