"""Segmentation under one condition: does training and inferring with the same window handling
beat the old mismatch (32^3 training patches, 64^3 inference windows routed by one location)?

Conditions (training patch -> inference window, routing of the encoder's conditional convolutions):
  train32_infer64          32^3 -> 64^3, one location per window (the old default; the baseline)
  train32_infer32          32^3 -> 32^3, one location per window (= per 32^3 landmark cell)
  train64_infer64          64^3 -> 64^3, one location per window
  train64_infer64_block32  64^3 -> 64^3, one location per 32^3 block at every encoder depth
                           (each block's convolutions read their halo from the neighbouring
                           blocks; the deepest map has exactly one voxel per block)
  train32_infer64_block32  32^3 -> 64^3, one location per 32^3 block: the routing of training
                           (a 32^3 patch is one block), with the context of a larger window
                           (chosen by this benchmark: the library's default since)

Every condition gets the same fine-tuning budget in patch voxels (``--budget voxels``, the
default: about the same compute and time): the benchmark's 32^3 patches go 4 per step, 64^3
patches 2 per step for a quarter of the steps (rounded); ``--budget steps`` gives 64^3 patches the
same number of steps instead (four times the voxels). Conditions with the same training share one
fine-tuned model. For a scratch encoder and for a pretrained one (made in
the run with the demo recipe, or ``--encoder``), and every seed, the held-out scans are predicted
with overlap 0 (the app's CPU default) and 0.25; reported per condition: Dice against the true
label (1 mm lung grid), seconds of the window stage per scan, the Dice between the overlap-0 and
overlap-0.25 predictions (their disagreement was the symptom), fine-tuning seconds, and the
ratios to the baseline condition measured in the same run. Overlap 0.25 runs on the first
``agreement_scans`` test scans only (it costs twice overlap 0).

Data are label_efficiency.py's cohorts (``--size full``: synthetic emphysema in real CT lung1 to
train, scans made from real CT lung2 to test; ``small``: phantoms, CI-sized). Each finished
(mode, seed) is kept as ``runs/<mode>_<seed>.json`` in the work folder and reused by a rerun with
the same settings.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/window_condition.py --size full --out benchmarks/results/window_condition.json
  python benchmarks/window_condition.py --size small --out /tmp/wc.json     # CI-sized, a few minutes

Writes the JSON (``{"conditions", "summary": {mode: {condition: {...}}}, "runs", "command", ...}``)
and a PNG plot beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import (  # noqa: E402
    SIZES,
    Size,
    fine_tuned_model,
    finetune_config,
    for_task,
    make_cohorts,
    predicted_emphysema,
    prepare_cohort,
    pretrain,
)
from preprocess import machine_info  # noqa: E402

from drasclr_monailabel.anatomy.atlas import Atlas, load_atlas, load_default_atlas  # noqa: E402
from drasclr_monailabel.errors import InputError  # noqa: E402
from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.segmentation.case import PreparedCase  # noqa: E402
from drasclr_monailabel.segmentation.labels import BINARY  # noqa: E402
from drasclr_monailabel.segmentation.network import EmphysemaUNet  # noqa: E402
from drasclr_monailabel.segmentation.training import FinetuneConfig  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json, write_with  # noqa: E402

MODES = ("scratch", "pretrained")
BUDGETS = ("voxels", "steps")
OVERLAPS = (0.0, 0.25)


@dataclass(frozen=True)
class Condition:
    """How a model is trained and run: patch edge, inference window edge, routing block (None:
    one location per window, read at its centre)."""

    name: str
    train: int
    infer: int
    routing_block: int | None = None

    @property
    def training(self) -> tuple[int, int | None]:
        """Conditions with the same training share one fine-tuned model (a routing block as large
        as the patch routes it exactly as one location per patch does)."""
        block = self.routing_block if self.routing_block is not None and self.routing_block < self.train else None
        return self.train, block


CONDITIONS = (
    Condition("train32_infer64", 32, 64),
    Condition("train32_infer32", 32, 32),
    Condition("train64_infer64", 64, 64),
    Condition("train64_infer64_block32", 64, 64, routing_block=32),
    Condition("train32_infer64_block32", 32, 64, routing_block=32),
)
BASELINE = CONDITIONS[0].name


@dataclass(frozen=True)
class Plan:
    """The benchmark's own knobs on top of label_efficiency's size: labelled training scans, test
    scans also predicted at overlap 0.25, and (CI size) the edge of the lung box test scans are
    cut to (None: whole scans)."""

    labelled: int
    agreement_scans: int
    test_box: int | None = None


PLANS = {"small": Plan(labelled=1, agreement_scans=1, test_box=96), "full": Plan(labelled=4, agreement_scans=1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a PNG plot is written beside it)")
    parser.add_argument("--size", choices=sorted(PLANS), default="full", help="benchmark size (default full)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, pretraining and runs (default: beside --out)")
    parser.add_argument("--encoder", type=Path, help="use this exported encoder instead of pretraining one")
    parser.add_argument("--atlas", type=Path, help="atlas folder for registration and coordinates (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; times scale with it)")
    parser.add_argument("--budget", choices=BUDGETS, default=BUDGETS[0],
                        help="what larger patches keep equal: patch voxels (default) or optimiser steps")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the size's, full 0 1 2)")
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES), help="encoders (default both)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.encoder is not None and not (args.encoder / "encoder.pt").is_file():
        parser.error(f"--encoder {args.encoder} is not an exported encoder folder (no encoder.pt)")
    torch.set_num_threads(args.threads)
    try:
        atlas = load_atlas(args.atlas) if args.atlas is not None else load_default_atlas()
    except InputError as exc:
        parser.error(f"--atlas: {exc}")
    size, plan = SIZES[args.size], PLANS[args.size]
    workdir = args.workdir or args.out.with_suffix("").with_name(args.out.stem + "_work")
    load_before, started = os.getloadavg(), time.perf_counter()

    cohorts = make_cohorts(size, workdir)
    encoder = args.encoder or pretrain(size, cohorts["unlabelled"], workdir / "pretrain", args.atlas)
    train_cases, test_cases = (for_task(prepare_cohort(cohorts[name], atlas), BINARY) for name in ("train", "test"))
    if plan.test_box is not None:
        test_cases = [lung_box(case, plan.test_box) for case in test_cases]
    settings = {"size": asdict(size), "plan": asdict(plan), "threads": args.threads, "budget": args.budget,
                "conditions": [asdict(c) for c in CONDITIONS], "atlas": atlas.atlas_id}
    runs = []
    for mode in args.modes:
        for seed in args.seeds or size.seeds:
            path = workdir / "runs" / f"{mode}_{seed}.json"
            record = _read(path)
            wanted = {**settings, "encoder": str(encoder) if mode == "pretrained" else None}
            if record is None or record.get("settings") != json.loads(json.dumps(wanted)):
                record = {"mode": mode, "seed": seed, "settings": wanted,
                          **measure(mode, seed, encoder, train_cases, test_cases, size, plan, args.budget, atlas)}
                write_json(path, record)
            runs.append(record)
            print(f"{mode} seed {seed}: " + ", ".join(
                f"{name} {entry['dice_overlap_0']:.3f}" for name, entry in record["conditions"].items()), flush=True)

    result = {
        "benchmark": "window_condition",
        "command": " ".join(["python", "benchmarks/window_condition.py", *(argv if argv is not None else sys.argv[1:])]),
        "conditions": {c.name: asdict(c) for c in CONDITIONS},
        "baseline": BASELINE,
        "summary": {mode: summarise([r for r in runs if r["mode"] == mode]) for mode in args.modes},
        "runs": runs,
        "settings": {**settings, "encoder": str(encoder), "test_scans": [c.case_id for c in test_cases],
                     "budgets": {c.name: _budget(finetune_config(size, "cpu", 0, count=plan.labelled), c.train, args.budget) for c in CONDITIONS}},
        "machine": machine_info(load_before),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    for mode in args.modes:
        for name, entry in result["summary"][mode].items():
            print(f"{mode:>10} {name:<24} Dice {entry['dice_overlap_0']['mean']:.3f} +- {entry['dice_overlap_0']['std']:.3f}, "
                  f"agreement {entry['agreement']['mean']:.3f}, {entry['seconds_overlap_0']['mean']:.1f} s/scan "
                  f"({entry['seconds_ratio_to_baseline']:.2f}x baseline)")
    print(f"wrote {args.out}")
    return 0


def lung_box(case: PreparedCase, edge: int) -> PreparedCase:
    """``case`` cut to the ``edge^3`` box (or less, at the grid's border) around its lung centroid,
    grid origin and landmark indices moved with it (CI size: a phantom scan takes tens of seconds
    per condition; the box, a few)."""
    shape = np.array(case.lungs.shape)
    centre = np.argwhere(case.lungs > 0).mean(axis=0).astype(int)
    start = np.clip(centre - edge // 2, 0, np.maximum(shape - edge, 0))
    return case.cropped(tuple(slice(int(a), int(a) + edge) for a in start))


def budget_config(base: FinetuneConfig, patch: int, rule: str = "voxels") -> FinetuneConfig:
    """``base`` (its patches, batch and steps) at another patch edge: at least 2 patches per step
    (BatchNorm and the foreground/anywhere mix) and, by ``rule``, the same patch voxels per run
    (fewer steps) or the same steps."""
    if patch == base.patch_size:
        return base
    batch = max(2, base.batch_size * base.patch_size**3 // patch**3)
    steps = base.steps_per_epoch
    if rule == "voxels":
        steps = max(1, round(steps * base.batch_size * base.patch_size**3 / (batch * patch**3)))
    return dataclasses.replace(base, patch_size=patch, batch_size=batch, steps_per_epoch=steps)


def _budget(base: FinetuneConfig, patch: int, rule: str) -> dict:
    config = budget_config(base, patch, rule)
    steps = config.max_epochs * config.steps_per_epoch
    return {"patch": patch, "batch": config.batch_size, "steps": steps, "patch_voxels": steps * config.batch_size * patch**3}


def measure(mode: str, seed: int, encoder: Path, train_cases: list[PreparedCase], test_cases: list[PreparedCase],
            size: Size, plan: Plan, rule: str, atlas: Atlas) -> dict:
    """Fine-tune once per distinct training, then score every condition on every test scan."""
    base = finetune_config(size, "cpu", seed, count=plan.labelled)
    out: dict = {"conditions": {}, "finetune_seconds": {}, "finetune_last_epoch_loss": {}}
    for training in dict.fromkeys(c.training for c in CONDITIONS):
        patch, block = training
        clock = time.perf_counter()
        model, stats = fine_tuned_model(mode, encoder, train_cases, plan.labelled, budget_config(base, patch, rule),
                                        routing_block=block, atlas=atlas)
        seconds = round(time.perf_counter() - clock, 1)
        for condition in (c for c in CONDITIONS if c.training == training):
            out["finetune_seconds"][condition.name] = seconds
            out["finetune_last_epoch_loss"][condition.name] = round(stats["loss"][-1], 4)
            out["conditions"][condition.name] = score(model, condition, test_cases, plan.agreement_scans)
    return out


def score(model: EmphysemaUNet, condition: Condition, test_cases: list[PreparedCase], agreement_scans: int) -> dict:
    """Dice, window-stage seconds and overlap agreement of one condition on the test scans.

    The model's routing is set to the condition's (the 32^3-trained model serves three conditions;
    its training routes alike with and without a 32^3 block).
    """
    model.routing_block = condition.routing_block
    cases = []
    for index, case in enumerate(test_cases):
        entry: dict = {"case": case.case_id}
        predictions = {}
        for overlap in OVERLAPS[: 2 if index < agreement_scans else 1]:
            clock = time.perf_counter()
            predictions[overlap] = predicted_emphysema(model, case, "cpu", overlap, window=condition.infer)
            entry[f"seconds_overlap_{overlap:g}"] = round(time.perf_counter() - clock, 2)
            entry[f"dice_overlap_{overlap:g}"] = round(float(dice(predictions[overlap], case.labels > 0)), 4)
        if len(predictions) == 2:
            entry["agreement"] = round(float(dice(predictions[0.0], predictions[0.25])), 4)
        cases.append(entry)
    keys = {key for entry in cases for key in entry if key != "case"}
    return {"cases": cases, **{key: float(np.mean([e[key] for e in cases if key in e])) for key in sorted(keys)}}


def summarise(runs: list[dict]) -> dict:
    """Mean and spread over seeds per condition, and the ratios to the baseline condition."""
    summary = {}
    for condition in CONDITIONS:
        per_seed = [r["conditions"][condition.name] for r in runs]
        entry = {key: _spread([p[key] for p in per_seed]) for key in per_seed[0] if key != "cases"}
        entry["dice_overlap_0_agreement_scans"] = _spread(  # overlap 0 on the scans that also ran 0.25
            [float(np.mean([c["dice_overlap_0"] for c in p["cases"] if "agreement" in c])) for p in per_seed])
        entry["finetune_seconds"] = _spread([r["finetune_seconds"][condition.name] for r in runs])
        summary[condition.name] = entry
    base = summary[BASELINE]
    for entry in summary.values():
        entry["dice_minus_baseline"] = round(entry["dice_overlap_0"]["mean"] - base["dice_overlap_0"]["mean"], 4)
        entry["seconds_ratio_to_baseline"] = round(entry["seconds_overlap_0"]["mean"] / base["seconds_overlap_0"]["mean"], 3)
        entry["finetune_seconds_ratio_to_baseline"] = round(entry["finetune_seconds"]["mean"] / base["finetune_seconds"]["mean"], 3)
    return summary


def _spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "runs": values}


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path) as fh:
        return json.load(fh)


def plot(result: dict, path: Path) -> None:
    """Three panels per condition, scratch and pretrained side by side: Dice (overlap 0), agreement
    between overlaps 0 and 0.25, window-stage seconds per scan (overlap 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["conditions"])
    panels = (("dice_overlap_0", "Dice vs truth (overlap 0)"), ("agreement", "Dice overlap 0 vs 0.25"),
              ("seconds_overlap_0", "seconds per scan (overlap 0)"))
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = np.arange(len(names))
    modes = [(offset, mode, colour) for offset, mode, colour in ((-0.2, "scratch", "tab:blue"), (0.2, "pretrained", "tab:orange"))
             if mode in result["summary"]]
    for axis, (key, title) in zip(axes, panels):
        for offset, mode, colour in modes:
            means = [result["summary"][mode][n][key]["mean"] for n in names]
            stds = [result["summary"][mode][n][key]["std"] for n in names]
            axis.bar(x + offset, means, 0.4, yerr=stds, capsize=3, color=colour, label=mode)
        axis.set_xticks(x, [n.replace("_", "\n", 2) for n in names], fontsize=7)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
        if key != "seconds_overlap_0":
            axis.set_ylim(0, 1)
    axes[0].legend()
    figure.suptitle("Emphysema segmentation: training and inference window conditions")
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, dpi=110))
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
