"""What the annotator's correction consists of, for finished runs of benchmarks/annotation_loop.py.

The run's last model (the app's ``emphysema`` after the run's final training round, read from the
run's own studies folder) and ``emphysema_laa`` pre-segment pool scans that the run did not label;
the voxels an annotator would change are split into false positives inside the scan's true lungs,
false positives outside them, and false negatives; with predicted and true emphysema volumes
(voxels of the scan's grid) and Dice. It explains how a model can score a higher test Dice than
``emphysema_laa`` and still cost more correcting: Dice rewards the true positives that a larger
prediction gains, the annotator pays for every false positive.

``--thresholds``: the lever this suggests (the app's ``--conf emphysema_threshold``), on whole
scans. The run's last model predicts each scan once (as the app's ``emphysema`` infers: its window
overlap and number format) and the emphysema probability is cut at each threshold; the changed
voxels are counted on the scans the run labelled and on the held-out pool scans, and the threshold
with the fewest changed voxels on the labelled scans (what the app chooses after a training round,
there from lung windows) is scored on the held-out ones. Meant for a run made with
``--app-conf emphysema_threshold=0.5``, whose model is the same as the default run's of its seed.

Usage:
  python benchmarks/annotation_effort_breakdown.py --workdir ~/.cache/drasclr-benchmarks/annotation_loop_full \\
      --runs random_pretrained_0 random_scratch_0 --scans 4 --out benchmarks/results/annotation_effort_breakdown.json
  python benchmarks/annotation_effort_breakdown.py --workdir ~/.cache/drasclr-benchmarks/annotation_loop_full \\
      --runs random_pretrained_1_emphysema_threshold-0.5 --thresholds 0.5 0.6 0.7 0.8 0.9 --scans 4 \\
      --out benchmarks/results/annotation_threshold_sweep.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotation_loop import FOLD, SIZES, Parser, app_conf, finished_run_file  # noqa: E402
from annotation_session import true_emphysema  # noqa: E402

from drasclr_monailabel.io.readers import read_ct  # noqa: E402
from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.nnunet.sources import cases_from_manifest  # noqa: E402
from drasclr_monailabel.packaged import APP_DIR  # noqa: E402
from drasclr_monailabel.segmentation.case import prepare_case  # noqa: E402
from drasclr_monailabel.segmentation.checkpoint import load_checkpoint  # noqa: E402
from drasclr_monailabel.segmentation.inference import WINDOW, native_labels, window_probabilities  # noqa: E402
from drasclr_monailabel.segmentation.precision import DTYPES  # noqa: E402
from drasclr_monailabel.tasks.conf import ResolvedConf, parse_app_conf, resolve_app_conf  # noqa: E402
from drasclr_monailabel.tasks.in_process import in_process_app, infer_all  # noqa: E402
from drasclr_monailabel.tasks.model_store import ModelStore  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="annotation_effort_breakdown.py", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="annotation_loop.py's work folder")
    parser.add_argument("--runs", nargs="+", required=True, help="finished runs, by folder name (e.g. random_pretrained_0)")
    parser.add_argument("--scans", type=int, default=4, help="unlabelled pool scans per run, in id order (default 4)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[],
                        help="also sweep the emphysema probability threshold over these values (0 to 1, exclusive)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if any(not 0.0 < t < 1.0 for t in args.thresholds):
        parser.error(f"--thresholds must lie between 0 and 1 (exclusive), got {args.thresholds}")
    for name in args.runs:
        if not finished_run_file(args.workdir / "runs" / name).is_file():
            parser.error(f"--runs {name}: {finished_run_file(args.workdir / 'runs' / name)} does not exist (not a finished run)")
    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    manifest = args.workdir / f"fold_{FOLD}" / "train" / "manifest.csv"
    pool = {case.image_id: case for case in cases_from_manifest(manifest)}
    with manifest.open(newline="") as handle:
        lungs = {row["id"]: manifest.parent / row["lungs"] for row in csv.DictReader(handle)}
    started = time.perf_counter()
    result: dict[str, Any] = {"runs": {name: breakdown_run(args.workdir, name, pool, lungs, args.scans, sorted(args.thresholds))
                                       for name in args.runs}}
    result["command"] = " ".join(["python", "benchmarks/annotation_effort_breakdown.py",
                                  *(argv if argv is not None else sys.argv[1:])])
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    print(f"wrote {args.out}", flush=True)
    return 0


def breakdown_run(workdir: Path, name: str, pool: dict[str, Any], lungs: dict[str, Path], scans: int,
                  thresholds: list[float]) -> dict[str, Any]:
    """Per scan and mean over scans: :func:`correction_parts` of the run's last model and of
    ``emphysema_laa`` on the first ``scans`` pool scans the run did not label; with ``thresholds``,
    ``threshold_sweep`` (:func:`threshold_sweep`)."""
    kept = json.loads(finished_run_file(workdir / "runs" / name).read_text())
    settings, picks = kept["settings"], kept["record"]["picks"]
    size = replace(SIZES[settings["size"]], app_conf=settings["app_conf"])
    encoder = Path(settings["encoder"]) if settings["arm"] == "pretrained" else None
    chosen = [image for image in sorted(pool) if image not in picks][:scans]
    per_scan: dict[str, Any] = {}
    conf = app_conf(size, encoder, settings["seed"], workdir)
    with in_process_app(workdir / "runs" / name / "studies", conf) as client:
        for image in chosen:
            truth = true_emphysema(pool[image])[0]
            lung = sitk.GetArrayFromImage(sitk.ReadImage(str(lungs[image]))) > 0
            per_scan[image] = {model: correction_parts(infer_all(client, model, image)[1] > 0, truth > 0, lung)
                               for model in ("emphysema", "emphysema_laa")}
            print(f"{name} {image}: " + "; ".join(f"{model} {parts}" for model, parts in per_scan[image].items()), flush=True)
    mean = {model: {key: round(float(np.mean([scan[model][key] for scan in per_scan.values()])), 4)
                    for key in per_scan[chosen[0]][model]} for model in ("emphysema", "emphysema_laa")}
    result = {"labelled": picks, "scans": chosen, "per_scan": per_scan, "mean": mean}
    if thresholds:
        resolved = resolve_app_conf(parse_app_conf(conf), APP_DIR, str(workdir / "runs" / name / "studies"))
        result["threshold_sweep"] = threshold_sweep(resolved, {image: pool[image] for image in picks},
                                                    {image: pool[image] for image in chosen}, thresholds)
        print(f"{name} threshold sweep: {result['threshold_sweep']}", flush=True)
    return result


def threshold_sweep(resolved: ResolvedConf, labelled: dict[str, Any], held_out: dict[str, Any],
                    thresholds: list[float]) -> dict[str, Any]:
    """Changed voxels (mean per scan) of the app's published ``emphysema`` model with its emphysema
    probability cut at each threshold, on the ``labelled`` and the ``held_out`` scans, the held-out
    Dice, and the threshold that the labelled scans choose (fewest changed voxels) with its held-out
    effort."""
    model, _ = load_checkpoint(ModelStore(resolved.model_dir).checkpoint, resolved.device)
    precision = DTYPES[resolved.infer_precision]

    def sweep(scans: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        effort, dices = np.zeros((len(scans), len(thresholds))), np.zeros((len(scans), len(thresholds)))
        for row, scan in enumerate(scans.values()):
            volume = read_ct(scan.image)
            case = prepare_case(volume)
            probabilities = window_probabilities(model, case, resolved.device, mc_dropout=False, window=WINDOW,
                                                 overlap=resolved.infer_overlap, batch_size=None, precision=precision)
            truth = true_emphysema(scan)[0] > 0
            for column, threshold in enumerate(thresholds):
                prediction = native_labels(probabilities, case, volume, threshold) > 0
                effort[row, column] = np.count_nonzero(prediction != truth)
                dices[row, column] = dice(prediction, truth)
        return effort.mean(axis=0), dices.mean(axis=0)

    labelled_effort, _ = sweep(labelled)
    held_out_effort, held_out_dice = sweep(held_out)
    chosen = int(np.argmin(labelled_effort))
    return {"thresholds": thresholds, "overlap": resolved.infer_overlap, "precision": resolved.infer_precision,
            "labelled_effort_voxels": [round(float(v)) for v in labelled_effort],
            "held_out_effort_voxels": [round(float(v)) for v in held_out_effort],
            "held_out_dice": [round(float(v), 4) for v in held_out_dice],
            "chosen_on_labelled": thresholds[chosen],
            "held_out_effort_at_chosen": round(float(held_out_effort[chosen]))}


def correction_parts(prediction: np.ndarray, truth: np.ndarray, lungs: np.ndarray) -> dict[str, float]:
    """What correcting ``prediction`` into ``truth`` changes (boolean arrays of one grid; ``lungs`` the
    scan's true lungs): ``false_positive_in_lungs``, ``false_positive_outside_lungs``,
    ``false_negative`` (voxels; their sum is the loop's ``effort_voxels``), ``predicted`` and ``true``
    voxels, and ``dice``."""
    false_positive = prediction & ~truth
    return {"false_positive_in_lungs": int(np.count_nonzero(false_positive & lungs)),
            "false_positive_outside_lungs": int(np.count_nonzero(false_positive & ~lungs)),
            "false_negative": int(np.count_nonzero(truth & ~prediction)),
            "predicted": int(np.count_nonzero(prediction)), "true": int(np.count_nonzero(truth)),
            "dice": round(float(dice(prediction, truth)), 4)}


if __name__ == "__main__":
    sys.exit(main())
