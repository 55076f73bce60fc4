"""Label efficiency of the emphysema model: Dice against the number of labelled scans,
fine-tuned from the pretrained DrasCLR encoder versus from scratch, with the same step budget.

Data (all made in this run, seeded):
  * labelled training pool: synthetic emphysema inserted into real CT ``lung1`` (``drasclr synth``);
  * held-out test scans: the same generator on a different real CT, ``lung2``;
  * unlabelled pretraining cohort: both real CTs, seeds disjoint from the two sets above.
The encoder is pretrained here (``drasclr preprocess`` + ``drasclr pretrain``) unless ``--encoder``
names an exported one. For every number of labelled scans and seed, one model is fine-tuned from
scratch and one from the encoder, then both are evaluated by Dice of binary emphysema on the test
scans' 1 mm lung grid, inferred as the app does (64^3 windows, each 32^3 block routed by its own
location, as the 32^3 fine-tuning patches are), with overlap 0.25. The plain HU < -950 threshold
on the same voxels is the baseline.

Every finished run is kept as ``runs/<mode>_<count>_<seed>.json`` in the work folder, so a run that
is stopped resumes where it was (same work folder, same encoder and recipe; scratch runs are also
kept when only ``--encoder`` or the pretrained arm's recipe changes, since they use neither; the
pretrained runs' records are then replaced, so give a variant its own work folder to keep both);
``--jobs N`` fine-tunes N runs at once in separate processes (worth it on a GPU, where one
small-patch run leaves it mostly idle).

Usage:
  python benchmarks/label_efficiency.py --size full --out benchmarks/results/label_efficiency.json
  python benchmarks/label_efficiency.py --size full --device cuda --jobs 4 --out benchmarks/results/label_efficiency.json
  python benchmarks/label_efficiency.py --size medium --out benchmarks/results/label_efficiency_medium.json
  python benchmarks/label_efficiency.py --size small --out /tmp/le.json     # CI-sized, phantoms
  python benchmarks/label_efficiency.py --size full --workdir W2 --encoder W/encoder --encoder-lr-scale 1 \
      --freeze-encoder-epochs 0 --out benchmarks/results/label_efficiency_full_rate.json   # pretrained arm at full rate

Writes the JSON (``{"pretrained": {"1": {"mean", "std", "runs"}, ...}, "scratch": {...},
"threshold_950": ..., "command": ...}``) and a PNG plot beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from drasclr_monailabel.anatomy.atlas import Atlas
from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.data.sample_data import fetch_sample_data
from drasclr_monailabel.data.synth_cohort import threshold_dice
from drasclr_monailabel.demo import DEMO_RECIPE
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.metrics import dice
from drasclr_monailabel.segmentation.case import PreparedCase, prepare_case
from drasclr_monailabel.segmentation.checkpoint import build_model
from drasclr_monailabel.segmentation.inference import WINDOW, window_probabilities
from drasclr_monailabel.segmentation.network import ROUTING_BLOCK, EmphysemaUNet
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune
from drasclr_monailabel.utils.atomic import write_json, write_with


@dataclass(frozen=True)
class Size:
    """One benchmark size: cohort sizes, budgets and the grid of runs."""

    source: str
    train_scans: int
    test_scans: int
    unlabelled_scans: int
    counts: tuple[int, ...]
    seeds: tuple[int, ...]
    finetune_epochs: int
    steps_per_epoch: int
    pretrain_steps: int


SIZES = {
    "small": Size("phantom", train_scans=1, test_scans=1, unlabelled_scans=2, counts=(1,), seeds=(0,),
                  finetune_epochs=1, steps_per_epoch=2, pretrain_steps=2),
    "medium": Size("real", train_scans=4, test_scans=2, unlabelled_scans=8, counts=(1, 2, 4), seeds=(0, 1),
                   finetune_epochs=4, steps_per_epoch=25, pretrain_steps=200),
    "full": Size("real", train_scans=8, test_scans=3, unlabelled_scans=16, counts=(1, 2, 4, 8), seeds=(0, 1, 2),
                 finetune_epochs=8, steps_per_epoch=25, pretrain_steps=600),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a PNG plot is written beside it)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="benchmark size (default full)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, cache and pretraining (default: beside --out)")
    parser.add_argument("--encoder", type=Path, help="use this exported encoder instead of pretraining one")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at once, each in its own process (default 1)")
    parser.add_argument("--encoder-lr-scale", type=float, default=FinetuneConfig.encoder_lr_scale,
                        help=f"pretrained runs: encoder learning rate / decoder's (default {FinetuneConfig.encoder_lr_scale})")
    parser.add_argument("--freeze-encoder-epochs", type=int, default=FinetuneConfig.freeze_encoder_epochs,
                        help=f"pretrained runs: first epochs with the encoder frozen (default {FinetuneConfig.freeze_encoder_epochs})")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.encoder_lr_scale <= 0 or args.freeze_encoder_epochs < 0:
        parser.error("--encoder-lr-scale must be positive and --freeze-encoder-epochs at least 0")
    recipe = Recipe(args.encoder_lr_scale, args.freeze_encoder_epochs)
    size = SIZES[args.size]
    workdir = args.workdir or args.out.with_suffix("").with_name(args.out.stem + "_work")
    started = time.perf_counter()

    cohorts = make_cohorts(size, workdir)
    encoder = args.encoder or pretrain(size, cohorts["unlabelled"], workdir / "pretrain")
    grid = [Run(mode, count, seed) for mode in ("scratch", "pretrained") for count in size.counts for seed in size.seeds]
    run_grid(grid, RunContext(cohorts["train"], cohorts["test"], encoder, size, args.device, workdir / "runs", recipe), args.jobs)
    result: dict = {"scratch": {}, "pretrained": {}}
    for mode in ("scratch", "pretrained"):
        for count in size.counts:
            runs = [read_run(workdir / "runs", Run(mode, count, seed))["dice"] for seed in size.seeds]
            result[mode][str(count)] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs}
            print(f"{mode:>10} with {count} labelled scan(s): Dice {np.mean(runs):.3f} +- {np.std(runs):.3f}", flush=True)
    test_cases = _worker_cases.get("test") or prepare_cohort(cohorts["test"])  # already prepared when --jobs 1
    result["threshold_950"] = float(np.mean([threshold_dice(c.scan.image, c.lungs, c.labels) for c in test_cases]))
    result["command"] = " ".join(["python", "benchmarks/label_efficiency.py", *(argv if argv is not None else sys.argv[1:])])
    result["settings"] = {**asdict(size), **asdict(recipe), "encoder": str(encoder), "device": args.device, "jobs": args.jobs,
                          "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"threshold -950 HU: Dice {result['threshold_950']:.3f}; wrote {args.out}")
    return 0


def make_cohorts(size: Size, workdir: Path) -> dict[str, Path]:
    """Three synthetic cohorts: labelled training pool, held-out test, unlabelled pretraining."""
    if size.source == "real":
        samples = fetch_sample_data(["lung1_image", "lung2_image"])
        sources = {"train": [samples["lung1_image"]], "test": [samples["lung2_image"]],
                   "unlabelled": [samples["lung1_image"], samples["lung2_image"]]}
    else:
        sources = {"train": ["phantom"], "test": ["phantom"], "unlabelled": ["phantom"]}
    scans = {"train": size.train_scans, "test": size.test_scans, "unlabelled": size.unlabelled_scans}
    seeds = {"train": 100, "test": 200, "unlabelled": 300}
    cohorts = {}
    for name, n in scans.items():
        folder = workdir / name
        if not (folder / "manifest.csv").is_file():
            run_step(["synth", "--n", str(n), "--out", str(folder), "--seed", str(seeds[name]), "--overwrite", "--no-progress",
                      "--severity", "2", "25", "--source", *map(str, sources[name])])
        cohorts[name] = folder
    return cohorts


def pretrain(size: Size, unlabelled: Path, run: Path, atlas: Path | None = None) -> Path:
    """Preprocess the unlabelled cohort (to ``atlas``, default the shipped one) and pretrain DrasCLR
    on it; returns the export folder."""
    cache = run.parent / "cache"
    atlas_option = ["--atlas", str(atlas)] if atlas is not None else []
    run_step(["preprocess", str(unlabelled / "manifest.csv"), "--out", str(cache), "--no-progress", *atlas_option])
    export = run.parent / "encoder"
    if not (export / "encoder.json").is_file():
        final = run / "checkpoints" / "final.pt"
        if not final.is_file():
            resume = ["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []
            run_step(["pretrain", "--config", str(DEMO_RECIPE), "--cache", str(cache), "--out", str(run), *resume, *atlas_option,
                      "--set", f"train.max_steps={size.pretrain_steps}", "--set", "train.progress=false"])
        run_step(["export", "--checkpoint", str(final), "--out", str(export)])
    return export


def prepare_cohort(cohort: Path, atlas: Atlas | None = None) -> list[PreparedCase]:
    """Every scan of a synthetic cohort on its 1 mm lung grid with its labels (coordinates in
    ``atlas``, default the shipped one)."""
    with open(cohort / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    cases = []
    for row in rows:
        volume = read_ct(cohort / row["image"])
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / row["label"])))
        cases.append(prepare_case(volume, label_map=label, atlas=atlas, case_id=row["id"]))
    return cases


INFERENCE = {"window": WINDOW, "routing_block": ROUTING_BLOCK}
"""How test scans are predicted; runs recorded with another (before: one location per 64^3 window) are redone."""


@dataclass(frozen=True)
class Run:
    """One cell of the grid: fine-tuning mode, number of labelled scans and seed."""

    mode: str
    count: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.mode}_{self.count}_{self.seed}.json"


@dataclass(frozen=True)
class Recipe:
    """How a pretrained encoder is fine-tuned (scratch runs train every layer at the full rate)."""

    encoder_lr_scale: float = FinetuneConfig.encoder_lr_scale
    freeze_encoder_epochs: int = FinetuneConfig.freeze_encoder_epochs


@dataclass(frozen=True)
class RunContext:
    """What every run shares: cohorts, encoder, budget, device, the folder of finished runs and
    the pretrained runs' fine-tuning recipe."""

    train: Path
    test: Path
    encoder: Path
    size: Size
    device: str
    runs_dir: Path
    recipe: Recipe = Recipe()


_worker_cases: dict[str, list[PreparedCase]] = {}


def run_grid(grid: list[Run], context: RunContext, jobs: int) -> None:
    """Fine-tune and score every run of ``grid`` not already in ``context.runs_dir``.

    With ``jobs`` > 1 the runs go to a pool of spawned processes (CUDA cannot be shared with forked
    ones); each process prepares the cohorts once and splits the CPU cores evenly with the others.
    """
    todo = [run for run in grid if not _is_done(run, context)]
    print(f"fine-tuning runs: {len(grid) - len(todo)} already done, {len(todo)} to do with {jobs} job(s)", flush=True)
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1:
        _load_cases(context, threads)
        for run in todo:
            _report(_score_run(run, context))
        return
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(todo)), initializer=_load_cases, initargs=(context, threads)) as pool:
        for record in pool.imap_unordered(_score_run_with, [(run, context) for run in todo]):
            _report(record)


def _is_done(run: Run, context: RunContext) -> bool:
    """A run counts as done when its record exists and was made with the same size and inference
    (window, routing) and, for a pretrained run, the same encoder and recipe (scratch runs use
    neither, so they carry over to a rerun with another encoder or recipe)."""
    path = context.runs_dir / run.file_name
    if not path.is_file():
        return False
    record = read_run(context.runs_dir, run)
    same_size = record.get("size") == json.loads(json.dumps(asdict(context.size))) and record.get("inference") == INFERENCE
    if run.mode == "scratch":
        return same_size
    same_recipe = record.get("recipe", asdict(Recipe())) == asdict(context.recipe)
    return same_size and same_recipe and record.get("encoder") == str(context.encoder)


def _load_cases(context: RunContext, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker_cases["train"] = prepare_cohort(context.train)
    _worker_cases["test"] = prepare_cohort(context.test)


def _score_run_with(job: tuple[Run, RunContext]) -> dict:
    return _score_run(*job)


def _score_run(run: Run, context: RunContext) -> dict:
    """Fine-tune and score one run; its record is written to ``runs_dir`` before returning."""
    started = time.perf_counter()
    scores = finetune_and_score(run.mode, context.encoder, _worker_cases["train"], _worker_cases["test"], run.count,
                                run.seed, context.size, context.device, context.recipe)
    record = {**asdict(run), "dice": float(np.mean(scores)), "dice_per_test_scan": scores,
              "seconds": round(time.perf_counter() - started, 1), "encoder": str(context.encoder),
              "size": asdict(context.size), "recipe": asdict(context.recipe), "device": context.device, "inference": INFERENCE}
    write_json(context.runs_dir / run.file_name, record)
    return record


def _report(record: dict) -> None:
    print(f"  {record['mode']:>10} {record['count']} scan(s) seed {record['seed']}: Dice {record['dice']:.3f} "
          f"({record['seconds']:.0f} s)", flush=True)


def read_run(runs_dir: Path, run: Run) -> dict:
    with open(runs_dir / run.file_name) as fh:
        return json.load(fh)


def finetune_and_score(mode: str, encoder: Path, train_cases: list[PreparedCase], test_cases: list[PreparedCase],
                       count: int, seed: int, size: Size, device: str, recipe: Recipe = Recipe()) -> list[float]:
    """Fine-tune on ``count`` seeded-random training scans; Dice of binary emphysema per test scan."""
    model, _ = fine_tuned_model(mode, encoder, train_cases, count, finetune_config(size, device, seed, recipe))
    return [float(dice(predicted_emphysema(model, case, device, overlap=0.25), case.labels > 0)) for case in test_cases]


def finetune_config(size: Size, device: str, seed: int, recipe: Recipe = Recipe()) -> FinetuneConfig:
    """The benchmark's fine-tuning budget and recipe (patches of the default size, batch 4)."""
    return FinetuneConfig(max_epochs=size.finetune_epochs, steps_per_epoch=size.steps_per_epoch, device=device, seed=seed,
                          encoder_lr_scale=recipe.encoder_lr_scale, freeze_encoder_epochs=recipe.freeze_encoder_epochs)


def fine_tuned_model(mode: str, encoder: Path, train_cases: list[PreparedCase], count: int, config: FinetuneConfig,
                     routing_block: int | None = ROUTING_BLOCK, atlas: Atlas | None = None) -> tuple[EmphysemaUNet, dict]:
    """A model fine-tuned on ``count`` training scans picked by ``config.seed``, from scratch or from
    ``encoder`` (made for ``atlas``, default the shipped one), and the fine-tuning statistics."""
    torch.manual_seed(config.seed)
    chosen = [train_cases[i] for i in np.random.default_rng(config.seed).permutation(len(train_cases))[:count]]
    model, _ = build_model(["emphysema"], pretrained=encoder if mode == "pretrained" else None, device=config.device,
                           routing_block=routing_block, atlas=atlas)
    return model, finetune(model, chosen, config, pretrained=mode == "pretrained")


def predicted_emphysema(model: EmphysemaUNet, case: PreparedCase, device: str, overlap: float,
                        window: int = WINDOW) -> np.ndarray:
    """Binary emphysema (Z, Y, X) on the case's 1 mm lung grid."""
    probabilities = window_probabilities(model, case, device, mc_dropout=False, window=window, overlap=overlap, batch_size=None)
    return np.argmax(probabilities, axis=0) > 0


def plot(result: dict, path: Path) -> None:
    """Dice (mean +- std over seeds) against labelled scans, both modes and the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for mode, colour in (("pretrained", "tab:orange"), ("scratch", "tab:blue")):
        counts = sorted(result[mode], key=int)
        means = [result[mode][c]["mean"] for c in counts]
        stds = [result[mode][c]["std"] for c in counts]
        axis.errorbar([int(c) for c in counts], means, yerr=stds, marker="o", capsize=3, color=colour,
                      label=f"{mode} encoder" if mode == "pretrained" else "from scratch")
    axis.axhline(result["threshold_950"], color="grey", linestyle="--", label="HU < -950 threshold")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("labelled training scans")
    axis.set_ylabel("Dice, held-out scans (other real CT)")
    axis.set_title("Emphysema segmentation: label efficiency")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, dpi=120))
    plt.close(figure)


def run_step(argv: list[str]) -> None:
    code = drasclr(argv)
    if code != 0:
        raise SystemExit(f"label_efficiency: 'drasclr {argv[0]}' failed with exit status {code}")


if __name__ == "__main__":
    sys.exit(main())
