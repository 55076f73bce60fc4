"""Label efficiency inside nnU-Net: the DrasCLR network from scratch vs warm-started from a
pretrained encoder (and nnU-Net's own U-Net from scratch), same training budget, same test cases.

A labelled cohort (e.g. ``drasclr synth`` with a manifest) is exported with ``drasclr
export-nnunet`` (coordinate channels, binary labels), planned and preprocessed by nnU-Net, and
split into a fixed test set and nested training sets of increasing size. Each arm trains with
nnU-Net's trainer machinery for ``--epochs`` x ``--iterations`` and is scored by nnU-Net's own
final validation (sliding windows on the whole held-out cases, Dice per case). The JSON records
the command, settings, every run's Dice and time, and warm/scratch Dice ratios per training size.

Example (CPU, ~30-60 min on 2 cores):
  drasclr synth --n 12 --source phantom --out cohort
  drasclr preprocess cohort/manifest.csv --out cache
  drasclr pretrain --config configs/drasclr_demo.yaml --cache cache --out run --set train.max_steps=300
  python benchmarks/nnunet_label_efficiency.py --cohort cohort/manifest.csv --encoder run \\
      --workdir /tmp/nnunet-bench --out benchmarks/results/nnunet_label_efficiency_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("nnUNet_def_n_proc", "1")  # nnU-Net reads it at import time: one export worker

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from drasclr_monailabel.nnunet.trainer import CUDA, nnUNetTrainerDrasCLR

ARMS = ("drasclr_scratch", "drasclr_warm", "nnunet_default")
DATASET_NAME = "LabelEfficiency"


class nnUNetTrainerDrasCLR_budget(nnUNetTrainerDrasCLR):
    """The DrasCLR trainer with the benchmark's patch edge (set from --patch)."""

    max_patch_edge = 32


class nnUNetTrainer_budget(nnUNetTrainer):
    """nnU-Net's own U-Net from scratch, with the same patch edge as the DrasCLR arms."""

    patch_edge = 32

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CUDA) -> None:
        config = plans["configurations"][configuration]
        config["patch_size"] = [min(p, self.patch_edge) for p in config["patch_size"]]
        super().__init__(plans, configuration, fold, dataset_json, device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", required=True, help="manifest CSV with image and label columns")
    parser.add_argument("--encoder", required=True, help="exported DrasCLR encoder (for the drasclr_warm arm)")
    parser.add_argument("--workdir", required=True, help="folder for nnUNet_raw / _preprocessed / _results")
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[2, 4], help="labelled training cases per run")
    parser.add_argument("--test-size", type=int, default=4, help="held-out cases scored by every run")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--spacing", type=int, default=2, help="export grid spacing in mm (1 = the encoder's)")
    parser.add_argument("--patch", type=int, default=32, help="cubic patch edge for every arm (multiple of 32)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-id", type=int, default=990)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.environ[name] = str(work / name)
    raw = export(args, work)
    plan(args)
    splits = write_splits(args, raw)
    results = []
    for arm in args.arms:
        for fold, size in enumerate(args.train_sizes):
            results.append(train_and_score(args, work, arm, fold, size))
            print(json.dumps(results[-1]), flush=True)
    write_report(args, splits, results)
    return 0


def export(args: argparse.Namespace, work: Path) -> Path:
    from drasclr_monailabel.nnunet.export import ExportOptions, export_dataset
    from drasclr_monailabel.nnunet.sources import cases_from_manifest
    from drasclr_monailabel.segmentation.labels import LabelSet

    cases = [c for c in cases_from_manifest(args.cohort) if c.label is not None]
    if len(cases) < max(args.train_sizes) + args.test_size:
        raise SystemExit(f"{args.cohort}: {len(cases)} labelled cases, need {max(args.train_sizes) + args.test_size}")
    summary = export_dataset(cases, work / "nnUNet_raw", args.dataset_id, DATASET_NAME,
                             ExportOptions(LabelSet(), coordinates=True, spacing_mm=args.spacing), args.cohort)
    print("\n".join(summary.lines()), flush=True)
    return summary.folder


def plan(args: argparse.Namespace) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([args.dataset_id], num_processes=1, check_dataset_integrity=True, clean=False)
    plan_experiments([args.dataset_id])
    preprocess([args.dataset_id], configurations=["3d_fullres"], num_processes=[1])


def write_splits(args: argparse.Namespace, raw: Path) -> list[dict]:
    """Fold i trains on the first ``train_sizes[i]`` cases; every fold validates on the same test cases."""
    from drasclr_monailabel.nnunet.dataset import dataset_name
    from drasclr_monailabel.utils.atomic import write_json

    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    test = cases[-args.test_size:]
    splits = [{"train": cases[:size], "val": test} for size in args.train_sizes]
    write_json(Path(os.environ["nnUNet_preprocessed"]) / dataset_name(args.dataset_id, DATASET_NAME) / "splits_final.json", splits)
    return splits


def train_and_score(args: argparse.Namespace, work: Path, arm: str, fold: int, size: int) -> dict:
    from drasclr_monailabel.nnunet.dataset import dataset_name
    from drasclr_monailabel.nnunet.warm_start import PRETRAINED_ENV

    os.environ["nnUNet_results"] = str(work / f"nnUNet_results_{arm}")
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in the main process (2 cores); set after planning, which needs >= 1
    os.environ.pop(PRETRAINED_ENV, None)
    if arm == "drasclr_warm":
        os.environ[PRETRAINED_ENV] = str(Path(args.encoder).resolve())
    nnUNetTrainerDrasCLR_budget.max_patch_edge = nnUNetTrainer_budget.patch_edge = args.patch
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / dataset_name(args.dataset_id, DATASET_NAME)
    plans = {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer_class = nnUNetTrainerDrasCLR_budget if arm.startswith("drasclr") else nnUNetTrainer_budget
    trainer = trainer_class(plans, "3d_fullres", fold, dataset_json, torch.device(args.device))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.save_every = 10**6
    start = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - start
    trainer.inference_allowed_mirroring_axes = None
    start = time.perf_counter()
    trainer.perform_actual_validation()
    score_s = time.perf_counter() - start
    summary = json.loads((Path(trainer.output_folder) / "validation" / "summary.json").read_text())
    per_case = {Path(c["prediction_file"]).name.split(".")[0]: round(c["metrics"]["1"]["Dice"], 4)
                for c in summary["metric_per_case"]}
    return {"arm": arm, "train_cases": size, "fold": fold, "dice_mean": round(summary["foreground_mean"]["Dice"], 4),
            "dice_per_case": per_case, "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1),
            "patch_size": trainer.configuration_manager.patch_size,
            "parameters": sum(p.numel() for p in trainer.network.parameters())}


def encoder_summary(path: str) -> dict:
    """What the warm-start encoder is: method, atlas, pretraining steps (from its encoder.json)."""
    from drasclr_monailabel.models.export import read_metadata

    meta = read_metadata(path)
    training = meta.get("training", {})
    return {"method": meta.get("method"), "atlas_id": meta["atlas"].get("id"), "steps": training.get("steps"),
            "global_batch": training.get("global_batch"), "architecture": meta["architecture"]}


def write_report(args: argparse.Namespace, splits: list[dict], results: list[dict]) -> None:
    from drasclr_monailabel.utils.atomic import write_json

    by = {(r["arm"], r["train_cases"]): r["dice_mean"] for r in results}
    ratios = {str(size): round(by[("drasclr_warm", size)] / by[("drasclr_scratch", size)], 3)
              for size in args.train_sizes if by.get(("drasclr_scratch", size)) and ("drasclr_warm", size) in by}
    report = {
        "benchmark": "nnunet_label_efficiency",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": args.device, "torch_threads": torch.get_num_threads()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "encoder": encoder_summary(args.encoder),
        "splits": splits,
        "results": results,
        "warm_over_scratch_dice": ratios,
    }
    write_json(args.out, report)
    print(json.dumps({"warm_over_scratch_dice": ratios, "dice": {f"{a}/{n}": round(d, 3) for (a, n), d in by.items()}}))


if __name__ == "__main__":
    sys.exit(main())
