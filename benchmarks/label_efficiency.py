"""Label efficiency of the emphysema model: Dice against the number of labelled scans, for every
arm at the same fine-tuning budget, on a patient never seen in pretraining or fine-tuning.

Data (all made in this run, seeded, with the realistic synthetic emphysema of docs/data.md; every
scan holds all three subtypes, each in its own zone, at 5-25 % of the lung in all, so that every
labelled subset and every test scan can score each subtype):
  * fold A: the labelled training pool and the unlabelled pretraining cohort come from the real CTs
    ``lung1`` and ``lung2``; the held-out test scans from another patient, LIDC-IDRI-0001;
  * fold B: the roles rotated: pool and pretraining from ``lung1`` and LIDC-IDRI-0001, test from
    ``lung2``. (``--size small`` uses phantoms with disjoint seeds.)
Arms (every one fine-tuned with the same steps, batch and patches at a given number of labelled
scans; the steps are the size's fixed epochs for every count, or with ``--epochs-per-scan N``
N epochs per labelled scan, a budget that grows with the count):
  * ``scratch``: the DrasCLR U-Net with a random encoder;
  * ``pretrained``: its encoder from DrasCLR pretraining on the fold's unlabelled cohort;
  * ``unconditioned``: pretrained the same way with plain convolutions of the same shapes
    (``model.encoder.conditioned=false``, the paper's no-anatomy ablation);
  * ``no_neighbour``: pretrained without the neighbour loss (``moco.neighbour_weight=0``);
  * ``monai_segresnet``: MONAI's SegResNet from scratch on the CT channel, the outside baseline.
Ablations of the scratch U-Net (not run unless named in ``--arms``), three that each change one
thing that sets it apart from SegResNet: ``scratch_unconditioned`` (plain convolutions, no location routing),
``scratch_groupnorm`` (GroupNorm instead of BatchNorm in the encoder), ``scratch_stride8`` (three
down-samplings with SegResNet's widths 8-64 instead of five, so a 32^3 patch keeps a 4^3 bottleneck
instead of 1^3), and ``scratch_segresnet_like`` (all three at once); and ``pretrained_stride8`` and
``unconditioned_stride8``, the stride-8 encoder pretrained like ``pretrained`` and ``unconditioned``
(does pretraining, and its location conditioning, help the shallower network?).
Tasks: ``binary`` (emphysema vs not: Dice of label > 0) and ``subtypes`` (centrilobular,
panlobular, paraseptal: the mean over the three of each class's Dice pooled over the test scans;
a class absent from every test label is left out). Test scans are predicted as the app does (64^3
windows, each 32^3 block routed by its own location, decoded emphysema first), with overlap 0.25 (0
at the CI size). The plain HU < -950 threshold on the same voxels is the binary baseline; it
cannot tell subtypes apart (docs/data.md).

Every finished run is kept as ``runs/<fold>_<task>_<arm>_<count>_<seed>.json`` in the work folder,
so a run that is stopped resumes where it was (same work folder, size, encoders and recipe; runs
without an encoder are kept when only an encoder, the recipe or the pretraining budget changes:
``--pretrain-steps N`` pretrains N steps into ``pretrain_<arm>_<N>_steps``); ``--jobs N`` fine-tunes N
runs at once in separate processes (worth it on a GPU).

Usage:
  python benchmarks/label_efficiency.py --size full --out benchmarks/results/label_efficiency.json
  python benchmarks/label_efficiency.py --size gpu --device cuda --jobs 8 --out benchmarks/results/label_efficiency_gpu.json
  python benchmarks/label_efficiency.py --size small --out /tmp/le.json     # CI-sized, phantoms
  python benchmarks/label_efficiency.py --size full --arms scratch pretrained --tasks binary --folds A --out /tmp/le_a.json
  python benchmarks/label_efficiency.py --size full --folds A --tasks subtypes --arms scratch pretrained --counts 2 8 --out /tmp/le_goal.json

Writes the JSON and a PNG plot beside it (same name, ``.png``). ``pretrained`` and ``scratch``
(``{"1": {"mean", "std", "runs"}, ...}``, runs pooled over folds and seeds) report the subtype
task; ``binary`` holds the binary task's arms in the same shape; ``arms`` every
``{task: {arm: {count: ..}}}``; ``folds`` the same per fold; ``threshold_950`` the binary threshold
Dice; ``pretraining`` the samples seen per landmark and the queue fill of every pretrained encoder;
``subtype_voxels`` the voxels of each subtype in every training and test scan of each fold;
``commits`` the git commits the pooled runs were made with (a persistent ``--workdir`` lets the
full grid, about 47 CPU-hours, gather over several sessions).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drasclr_steps import check_reuse, export_checkpoint, step_runner  # noqa: E402
from pretraining_signal import queue_fill  # noqa: E402

from drasclr_monailabel.anatomy.atlas import Atlas  # noqa: E402
from drasclr_monailabel.data.sample_data import fetch_sample_data  # noqa: E402
from drasclr_monailabel.data.synth_cohort import threshold_dice  # noqa: E402
from drasclr_monailabel.demo import DEMO_RECIPE  # noqa: E402
from drasclr_monailabel.io import read_ct  # noqa: E402
from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.models.encoder import EncoderArchitecture  # noqa: E402
from drasclr_monailabel.segmentation.case import PreparedCase, prepare_case  # noqa: E402
from drasclr_monailabel.segmentation.checkpoint import build_model  # noqa: E402
from drasclr_monailabel.segmentation.inference import WINDOW, class_labels, window_probabilities  # noqa: E402
from drasclr_monailabel.segmentation.labels import BINARY, SUBTYPES, LabelSet  # noqa: E402
from drasclr_monailabel.segmentation.network import ROUTING_BLOCK, EmphysemaUNet  # noqa: E402
from drasclr_monailabel.segmentation.training import ENCODER_BATCHNORM, FinetuneConfig, finetune  # noqa: E402
from drasclr_monailabel.ssl.recipe import load_recipe  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json, write_with  # noqa: E402

run_step = step_runner(__file__)

STRIDE8 = {"block_channels": (16,), "top_channels": 32, "embedding_dim": 64}
"""The encoder with three down-samplings (SegResNet's widths 8-64): a 4^3 bottleneck for a 32^3 patch."""
_STRIDE8_SETTINGS = [f"model.encoder.{key}={json.dumps(value)}" for key, value in STRIDE8.items()]
PRETRAINING_ARMS = {"pretrained": [], "unconditioned": ["model.encoder.conditioned=false"],
                    "no_neighbour": ["moco.neighbour_weight=0"], "pretrained_stride8": _STRIDE8_SETTINGS,
                    "unconditioned_stride8": [*_STRIDE8_SETTINGS, "model.encoder.conditioned=false"]}
"""Arms whose encoder comes from pretraining, with their recipe changes (same budget)."""
SCRATCH_ARMS = {"scratch": EncoderArchitecture(), "scratch_unconditioned": EncoderArchitecture(conditioned=False),
                "scratch_groupnorm": EncoderArchitecture(norm="group"),
                "scratch_stride8": EncoderArchitecture(**STRIDE8),
                "scratch_segresnet_like": EncoderArchitecture(**STRIDE8, conditioned=False, norm="group")}
"""Arms that fine-tune the DrasCLR U-Net from a random encoder of this architecture."""
ARMS = ("scratch", "pretrained", "unconditioned", "no_neighbour", "monai_segresnet")
"""The arms run by default."""
ABLATION_ARMS = tuple(arm for arm in (*SCRATCH_ARMS, *PRETRAINING_ARMS) if arm not in ARMS)
"""The ablations (of the scratch U-Net, and pretraining of its stride-8 variant), run only when named in ``--arms``."""
TASKS = {"subtypes": SUBTYPES, "binary": BINARY}
# True emphysema share of the lung in every synthetic scan (low, high), split between the three subtypes.
SEVERITY_PERCENT = (5, 25)
FOLD_SOURCES = {"A": {"pool": ("lung1_image", "lung2_image"), "test": "lidc0001_image"},
                "B": {"pool": ("lung1_image", "lidc0001_image"), "test": "lung2_image"}}
"""Real CTs of each fold: the labelled pool and the pretraining cohort share ``pool``; ``test`` is the held-out patient."""


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
    pretrain_batch: int = 4
    pretrain_queue: int = 32
    folds: tuple[str, ...] = ("A", "B")
    overlap: float = 0.25  # of the 64^3 inference windows on the test scans
    test_slab: int | None = None  # score only this many axial slices (1 mm) at the middle of each test scan's lungs
    finetune_epochs_per_scan: int | None = None  # fine-tune this many epochs per labelled scan instead of finetune_epochs

    def epochs_for(self, count: int) -> int:
        """Fine-tuning epochs of a run with ``count`` labelled scans (each ``steps_per_epoch`` steps)."""
        return self.finetune_epochs if self.finetune_epochs_per_scan is None else self.finetune_epochs_per_scan * count


SIZE_BEFORE_ITS_FIELDS = {"finetune_epochs_per_scan": None}
"""What a run record made before a size field existed was made with."""


SIZES = {
    "small": Size("phantom", train_scans=1, test_scans=1, unlabelled_scans=2, counts=(1,), seeds=(0,),
                  finetune_epochs=1, steps_per_epoch=2, pretrain_steps=2, folds=("A",), overlap=0.0, test_slab=64),
    "medium": Size("real", train_scans=4, test_scans=2, unlabelled_scans=8, counts=(1, 2, 4), seeds=(0, 1),
                   finetune_epochs=4, steps_per_epoch=25, pretrain_steps=200, folds=("A",)),
    # fine-tuning: 128 epochs of 25 steps, 3,200 steps for every count (at 32 epochs every count was under-trained:
    # fold A's scratch subtype Dice doubled from 32 to 128 at 1 and at 8 labelled scans, docs/benchmarks.md);
    # with the test inference, two runs at once on the 2-core CPU (--jobs 2) take 19-22 minutes: one run every 10.
    # Pretraining: sized at 0.9 s per step of 8 patches (benchmarks/pretraining_signal.py, beside other work), about
    # 60 minutes; fold A's encoder later ran at 0.27-0.29 s a step on idle cores, about 19 minutes (docs/benchmarks.md);
    # kept at 4,000 steps because 12,000 (69 minutes, --pretrain-steps) did not fine-tune better on fold A;
    # queue 16 is what the queue plan recommends for 16 scans
    "full": Size("real", train_scans=8, test_scans=3, unlabelled_scans=16, counts=(1, 2, 4, 8), seeds=(0, 1, 2),
                 finetune_epochs=128, steps_per_epoch=25, pretrain_steps=4000, pretrain_batch=8, pretrain_queue=16),
    # sized for about 10 minutes of one H100/H200 per fold (three pretrainings and the grid, --jobs 8) when
    # fine-tuning was 32 epochs: an estimate, not yet measured (no GPU has been lent to this benchmark); the
    # 128-epoch fine-tuning of the full size, kept here so that the two sizes compare, quadruples the grid's part
    "gpu": Size("real", train_scans=8, test_scans=3, unlabelled_scans=32, counts=(1, 2, 4, 8), seeds=(0, 1, 2),
                finetune_epochs=128, steps_per_epoch=25, pretrain_steps=3000, pretrain_batch=32, pretrain_queue=32),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a PNG plot is written beside it)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="benchmark size (default full)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, caches and pretraining (default: beside --out)")
    parser.add_argument("--encoder", type=Path,
                        help="exported encoder for the pretrained arm instead of pretraining one (its pretraining data must "
                             "not include the test patient)")
    parser.add_argument("--arms", nargs="+", choices=ARMS + ABLATION_ARMS, default=list(ARMS),
                        help=f"arms to run (default {' '.join(ARMS)})")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS), help="tasks (default both)")
    parser.add_argument("--folds", nargs="+", choices=sorted(FOLD_SOURCES), help="folds (default: the size's)")
    parser.add_argument("--counts", nargs="+", type=int, help="numbers of labelled scans, a subset of the size's (default all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds, a subset of the size's (default all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning runs at once, each in its own process (default 1)")
    parser.add_argument("--encoder-lr-scale", type=float, default=FinetuneConfig.encoder_lr_scale,
                        help=f"pretrained arms: encoder learning rate / decoder's (default {FinetuneConfig.encoder_lr_scale})")
    parser.add_argument("--freeze-encoder-epochs", type=int, default=FinetuneConfig.freeze_encoder_epochs,
                        help=f"pretrained arms: first epochs with the encoder frozen (default {FinetuneConfig.freeze_encoder_epochs})")
    parser.add_argument("--encoder-batchnorm", choices=ENCODER_BATCHNORM, default=FinetuneConfig.encoder_batchnorm,
                        help="pretrained arms: keep the encoder's BatchNorm statistics from pretraining, or re-estimate "
                             f"them from the fine-tuning batches as scratch does (default {FinetuneConfig.encoder_batchnorm})")
    parser.add_argument("--pretrain-steps", type=int,
                        help="pretraining steps for the pretraining arms instead of the size's; those encoders go to their "
                             "own folders (pretrain_<arm>_<N>_steps), so the size's encoders and the other arms' runs are kept")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--finetune-epochs", type=int,
                        help="fine-tuning epochs for every arm and count instead of the size's (its steps per epoch; runs are redone)")
    budget.add_argument("--epochs-per-scan", type=int,
                        help="fine-tuning epochs per labelled scan instead of the size's fixed epochs: a budget that grows "
                             "with the count, e.g. 16 gives 16 epochs to 1 scan and 128 to 8 (runs are redone)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.encoder_lr_scale <= 0 or args.freeze_encoder_epochs < 0:
        parser.error("--encoder-lr-scale must be positive and --freeze-encoder-epochs at least 0")
    recipe = Recipe(args.encoder_lr_scale, args.freeze_encoder_epochs, args.encoder_batchnorm)
    size = SIZES[args.size]
    pretrain_folder = "pretrain_{arm}"
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            parser.error(f"--pretrain-steps must be at least 1, got {args.pretrain_steps}")
        if args.pretrain_steps != size.pretrain_steps:
            pretrain_folder += f"_{args.pretrain_steps}_steps"
        size = replace(size, pretrain_steps=args.pretrain_steps)
    if args.finetune_epochs is not None:
        if args.finetune_epochs < 1:
            parser.error(f"--finetune-epochs must be at least 1, got {args.finetune_epochs}")
        size = replace(size, finetune_epochs=args.finetune_epochs)
    if args.epochs_per_scan is not None:
        if args.epochs_per_scan < 1:
            parser.error(f"--epochs-per-scan must be at least 1, got {args.epochs_per_scan}")
        size = replace(size, finetune_epochs_per_scan=args.epochs_per_scan)
    folds = tuple(args.folds or size.folds)
    counts, seeds = tuple(dict.fromkeys(args.counts or size.counts)), tuple(dict.fromkeys(args.seeds or size.seeds))
    for name, chosen, allowed in (("--counts", counts, size.counts), ("--seeds", seeds, size.seeds)):
        if not set(chosen) <= set(allowed):
            parser.error(f"{name} must be among the {args.size} size's {list(allowed)}, got {list(chosen)}")
    arms, tasks = tuple(dict.fromkeys(args.arms)), tuple(dict.fromkeys(args.tasks))
    workdir = args.workdir or args.out.with_suffix("").with_name(args.out.stem + "_work")
    started, commit = time.perf_counter(), code_version()

    threshold, pretraining, composition = {}, {}, {}
    for fold in folds:
        folder = workdir / f"fold_{fold}"
        cohorts = make_cohorts(size, folder, fold)
        encoders = {arm: pretrain(size, cohorts["unlabelled"], folder / pretrain_folder.format(arm=arm),
                                  overrides=PRETRAINING_ARMS[arm], device=args.device)
                    for arm in arms if arm in PRETRAINING_ARMS and not (arm == "pretrained" and args.encoder)}
        pretraining[fold] = {arm: pretraining_record(size, folder / pretrain_folder.format(arm=arm)) for arm in encoders}
        if args.encoder and "pretrained" in arms:
            encoders["pretrained"] = args.encoder
        context = RunContext(cohorts["train"], cohorts["test"], encoders, size, args.device, workdir / "runs", recipe, commit)
        grid = [Run(fold, task, arm, count, seed) for task in tasks for count in counts for seed in seeds for arm in arms]
        run_grid(grid, context, args.jobs)
        test_cases = _worker_cases.get(str(cohorts["test"])) or prepare_cohort(cohorts["test"])
        threshold[fold] = float(np.mean([threshold_dice(c.scan.image, c.lungs, c.labels) for c in test_cases]))
        composition[fold] = {part: subtype_voxels(cohorts[part]) for part in ("train", "test")}
        _worker_cases.clear()

    result = summarise(workdir / "runs", counts, seeds, folds, tasks, arms)
    result["threshold_950"] = float(np.mean(list(threshold.values())))
    result["threshold_950_folds"] = threshold
    result["pretraining"] = pretraining
    result["subtype_voxels"] = composition
    result["command"] = " ".join(["python", "benchmarks/label_efficiency.py", *(argv if argv is not None else sys.argv[1:])])
    result["settings"] = {**asdict(size), **asdict(recipe), "folds": list(folds), "counts_run": list(counts), "seeds_run": list(seeds), "fold_sources": FOLD_SOURCES, "device": args.device,
                          "jobs": args.jobs,
                          "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"threshold -950 HU (binary): Dice {result['threshold_950']:.3f}; wrote {args.out}")
    return 0


def summarise(runs_dir: Path, counts: tuple[int, ...], seeds: tuple[int, ...], folds: tuple[str, ...], tasks: tuple[str, ...],
              arms: tuple[str, ...]) -> dict:
    """The JSON's Dice blocks: per task and arm, per number of labelled scans, runs pooled over
    folds and seeds (and per fold under ``folds``)."""
    def block(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": values}

    result: dict = {"arms": {}, "folds": {}}
    commits = set()
    for task in tasks:
        result["arms"][task] = {}
        for arm in arms:
            result["arms"][task][arm] = {}
            for count in counts:
                records = {fold: [read_run(runs_dir, Run(fold, task, arm, count, seed)) for seed in seeds] for fold in folds}
                commits.update(record.get("commit", "unrecorded") for values in records.values() for record in values)
                per_fold = {fold: [record["dice"] for record in values] for fold, values in records.items()}
                result["arms"][task][arm][str(count)] = block([d for values in per_fold.values() for d in values])
                for fold, values in per_fold.items():
                    result["folds"].setdefault(fold, {}).setdefault(task, {}).setdefault(arm, {})[str(count)] = block(values)
                print(f"{task:>8} {arm:>16} with {count} labelled scan(s): Dice "
                      f"{result['arms'][task][arm][str(count)]['mean']:.3f} +- {result['arms'][task][arm][str(count)]['std']:.3f}",
                      flush=True)
    headline = "subtypes" if "subtypes" in tasks else tasks[0]
    for arm in ("pretrained", "scratch"):
        if arm in arms:
            result[arm] = result["arms"][headline][arm]
    if "binary" in tasks:
        result["binary"] = result["arms"]["binary"]
    result["headline_task"] = headline
    result["commits"] = sorted(commits)
    return result


def make_cohorts(size: Size, workdir: Path, fold: str = "A", sources: dict[str, list[Path]] | None = None) -> dict[str, Path]:
    """Three synthetic cohorts of one fold: labelled training pool, held-out test, unlabelled pretraining.
    ``sources`` replaces the size's source CTs (``{"train", "test", "unlabelled"}: CT files``)."""
    if sources is None and size.source == "real":
        names = FOLD_SOURCES[fold]
        samples = fetch_sample_data([*names["pool"], names["test"]])
        pool = [samples[name] for name in names["pool"]]
        sources = {"train": pool, "test": [samples[names["test"]]], "unlabelled": pool}
    elif sources is None:
        sources = {"train": ["phantom"], "test": ["phantom"], "unlabelled": ["phantom"]}
    scans = {"train": size.train_scans, "test": size.test_scans, "unlabelled": size.unlabelled_scans}
    offset = 1000 * sorted(FOLD_SOURCES).index(fold)
    seeds = {"train": 100 + offset, "test": 200 + offset, "unlabelled": 300 + offset}
    cohorts = {}
    for name, n in scans.items():
        folder = workdir / name
        if not (folder / "manifest.csv").is_file():
            run_step(["synth", "--n", str(n), "--out", str(folder), "--seed", str(seeds[name]), "--overwrite", "--no-progress",
                      "--severity", *map(str, SEVERITY_PERCENT), "--every-subtype", "--source", *map(str, sources[name])])
        cohorts[name] = folder
    return cohorts


def pretrain(size: Size, unlabelled: Path, run: Path, atlas: Path | None = None, overrides: list[str] | None = None,
             device: str = "cpu") -> Path:
    """Preprocess the unlabelled cohort (to ``atlas``, default the shipped one; one cache per fold)
    and pretrain DrasCLR on it with the size's budget and ``overrides``; returns the export folder."""
    cache = run.parent / "cache"
    atlas_option = ["--atlas", str(atlas)] if atlas is not None else []
    run_step(["preprocess", str(unlabelled / "manifest.csv"), "--out", str(cache), "--no-progress", *atlas_option])
    export = run.parent / ("encoder" if run.name == "pretrain" else f"encoder_{run.name.removeprefix('pretrain_')}")
    settings = [f"train.max_steps={size.pretrain_steps}", f"train.batch_size={size.pretrain_batch}",
                f"moco.queue_size={size.pretrain_queue}", "train.progress=false", f"train.device={device}", *(overrides or [])]
    final = run / "checkpoints" / "final.pt"
    if final.is_file():  # a finished run (exported or not) is reused only for the recipe asked for
        check_reuse(__file__, run, load_recipe(DEMO_RECIPE, [*settings, *([f"data.atlas={atlas}"] if atlas is not None else [])]))
    else:
        resume = ["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []
        run_step(["pretrain", "--config", str(DEMO_RECIPE), "--cache", str(cache), "--out", str(run), *resume, *atlas_option,
                  *[a for o in settings for a in ("--set", o)]])
    return export_checkpoint(__file__, final, export)


def pretraining_record(size: Size, run: Path) -> dict:
    """Samples seen per landmark (median) and the queue fill (planned and reached) of one pretraining run."""
    plan = json.loads((run / "plan.json").read_text())["queue_fill"]
    return {"steps": size.pretrain_steps, "batch": size.pretrain_batch,
            "samples_per_landmark_median": plan["keys_per_landmark_in_run_median"], "queue_fill": queue_fill(run)}


def prepare_cohort(cohort: Path, atlas: Atlas | None = None) -> list[PreparedCase]:
    """Every scan of a synthetic cohort on its 1 mm lung grid with its subtype labels (class 0-3;
    coordinates in ``atlas``, default the shipped one)."""
    with open(cohort / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    cases = []
    for row in rows:
        volume = read_ct(cohort / row["image"])
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / row["label"])))
        cases.append(prepare_case(volume, label_map=label, atlas=atlas, case_id=row["id"], label_set=LabelSet(SUBTYPES)))
    return cases


def subtype_voxels(cohort: Path) -> dict[str, dict[str, int]]:
    """Voxels of each subtype in each scan's label on its own grid (which subtypes the labelled pool
    and the test patient hold decides what the subtype Dice can show)."""
    with open(cohort / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    counts = {}
    for row in rows:
        label = sitk.GetArrayViewFromImage(sitk.ReadImage(str(cohort / row["label"])))
        voxels = np.bincount(np.asarray(label).ravel(), minlength=len(SUBTYPES) + 1)
        counts[row["id"]] = {name: int(voxels[i]) for i, name in enumerate(SUBTYPES, start=1)}
    return counts


def for_task(cases: list[PreparedCase], labels: tuple[str, ...]) -> list[PreparedCase]:
    """The cases with class indices of ``labels`` (subtype cases as prepared; binary: label > 0)."""
    if tuple(labels) == SUBTYPES:
        return cases
    return [replace(case, labels=(case.labels > 0).astype(np.uint8)) for case in cases]


INFERENCE = {"window": WINDOW, "routing_block": ROUTING_BLOCK, "decoding": "emphysema_first"}
"""How test scans are predicted and decoded; runs recorded with another (before: one location per 64^3 window, or
the arg-max over all classes) are redone."""


@dataclass(frozen=True)
class Run:
    """One cell of the grid: fold, task, arm, number of labelled scans and seed."""

    fold: str
    task: str
    arm: str
    count: int
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.fold}_{self.task}_{self.arm}_{self.count}_{self.seed}.json"


@dataclass(frozen=True)
class Recipe:
    """How a pretrained encoder is fine-tuned (the other arms train every layer at the full rate)."""

    encoder_lr_scale: float = FinetuneConfig.encoder_lr_scale
    freeze_encoder_epochs: int = FinetuneConfig.freeze_encoder_epochs
    encoder_batchnorm: str = FinetuneConfig.encoder_batchnorm


RECIPE_BEFORE_ITS_FIELDS = {"encoder_batchnorm": "pretraining"}
"""What a run record made before a recipe field existed was fine-tuned with (the default of that
time, where it differs from today's)."""


@dataclass(frozen=True)
class RunContext:
    """What every run of one fold shares: cohorts, the pretrained arms' encoders, budget, device,
    the folder of finished runs and the pretrained arms' fine-tuning recipe."""

    train: Path
    test: Path
    encoders: dict[str, Path]
    size: Size
    device: str
    runs_dir: Path
    recipe: Recipe = Recipe()
    commit: str = "unknown"  # the code the runs are made with (code_version() when the benchmark started)


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
    """A run counts as done when its record exists and was made with the same size (the same
    fine-tuning steps for its count, whichever budget rule gave them; the pretraining budget only
    for a pretrained arm) and inference (window,
    routing) and, for a pretrained arm, the same encoder and recipe (the other arms use
    neither, so they carry over to a rerun with another encoder or recipe)."""
    path = context.runs_dir / run.file_name
    if not path.is_file():
        return False
    record = read_run(context.runs_dir, run)
    try:
        recorded = Size(**{**SIZE_BEFORE_ITS_FIELDS, **record["size"]})
    except (KeyError, TypeError):  # no size, or one with fields this version lacks
        return False
    same_size = _as_run_sees_it(recorded, run.count, run.arm) == _as_run_sees_it(context.size, run.count, run.arm) and record.get("inference") == INFERENCE
    if run.arm not in PRETRAINING_ARMS:
        return same_size
    same_recipe = {**asdict(Recipe()), **RECIPE_BEFORE_ITS_FIELDS, **record.get("recipe", {})} == asdict(context.recipe)
    return same_size and same_recipe and record.get("encoder") == str(context.encoders.get(run.arm))


PRETRAINING_FIELDS = ("pretrain_steps", "pretrain_batch", "pretrain_queue")
"""Size fields only the pretraining arms depend on (a pretrained run also records its encoder)."""


def _as_run_sees_it(size: Size, count: int, arm: str) -> dict:
    """``size`` as plain JSON values, its budget rule replaced by the epochs a run with ``count``
    labelled scans gets (a fixed 128 epochs and 16 per scan are the same budget for 8 scans), less
    the pretraining budget for an arm that is not pretrained."""
    seen = json.loads(json.dumps(asdict(replace(size, finetune_epochs=size.epochs_for(count), finetune_epochs_per_scan=None))))
    return seen if arm in PRETRAINING_ARMS else {k: v for k, v in seen.items() if k not in PRETRAINING_FIELDS}


def _load_cases(context: RunContext, threads: int) -> None:
    torch.set_num_threads(threads)
    if str(context.train) not in _worker_cases:
        _worker_cases[str(context.train)] = prepare_cohort(context.train)
    if str(context.test) not in _worker_cases:
        test = prepare_cohort(context.test)
        slab = context.size.test_slab
        _worker_cases[str(context.test)] = test if slab is None else [central_slab(case, slab) for case in test]


def central_slab(case: PreparedCase, slices: int) -> PreparedCase:
    """The ``slices`` axial slices of ``case`` centred on its lungs' z extent (origin and landmarks
    moved with them): the CI size scores a fifth of a phantom's 1 mm grid instead of all of it."""
    z = np.flatnonzero(case.lungs.any(axis=(1, 2)))
    start = int(np.clip((z[0] + z[-1] + 1 - slices) // 2, 0, max(case.lungs.shape[0] - slices, 0)))
    return case.cropped((slice(start, start + slices), slice(None), slice(None)))


def _score_run_with(job: tuple[Run, RunContext]) -> dict:
    return _score_run(*job)


def _score_run(run: Run, context: RunContext) -> dict:
    """Fine-tune and score one run; its record is written to ``runs_dir`` before returning."""
    started = time.perf_counter()
    encoder = context.encoders.get(run.arm)
    labels = TASKS[run.task]
    config = finetune_config(context.size, context.device, run.seed, context.recipe, count=run.count)
    model, _ = fine_tuned_model(run.arm, encoder, for_task(_worker_cases[str(context.train)], labels), run.count, config,
                                labels=labels)
    score = score_on_test(model, for_task(_worker_cases[str(context.test)], labels), context.device, len(labels),
                          context.size.overlap)
    network = model.encoder.architecture.to_dict() if isinstance(model, EmphysemaUNet) else {"name": type(model).__name__}
    record = {**asdict(run), **score, "seconds": round(time.perf_counter() - started, 1), "encoder": str(encoder), "network": network,
              "finetune_steps": config.max_epochs * config.steps_per_epoch,
              "size": asdict(context.size), "recipe": asdict(context.recipe), "device": context.device, "inference": INFERENCE,
              "commit": context.commit}
    write_json(context.runs_dir / run.file_name, record)
    return record


def code_version() -> str:
    """The git commit this script runs from, ``+modified`` when tracked files differ from it, or
    ``unknown`` outside a git checkout. Kept in every run record: a work folder that persists pools
    runs made over several sessions, and the JSON lists the commits it pooled."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        modified = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                  text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if modified else "")


def _report(record: dict) -> None:
    print(f"  fold {record['fold']} {record['task']:>8} {record['arm']:>16} {record['count']} scan(s) seed {record['seed']}: "
          f"Dice {record['dice']:.3f} ({record['seconds']:.0f} s)", flush=True)


def read_run(runs_dir: Path, run: Run) -> dict:
    with open(runs_dir / run.file_name) as fh:
        return json.load(fh)


def score_on_test(model: torch.nn.Module, cases: list[PreparedCase], device: str, foreground: int, overlap: float) -> dict:
    """``dice`` of ``model`` on the test cases: binary (one foreground class) the mean over scans;
    subtypes :func:`pooled_class_dice` averaged over the classes (and the binary Dice beside it)."""
    predictions = [class_labels(window_probabilities(model, case, device, mc_dropout=False, window=WINDOW, overlap=overlap,
                                                     batch_size=None)) for case in cases]
    truths = [case.labels for case in cases]
    binary = [float(dice(p > 0, t > 0)) for p, t in zip(predictions, truths)]
    if foreground == 1:
        return {"dice": float(np.mean(binary)), "dice_per_test_scan": binary}
    per_class = pooled_class_dice(predictions, truths, SUBTYPES)
    return {"dice": float(np.mean(list(per_class.values()))), "dice_per_class": per_class, "binary_dice": float(np.mean(binary))}


def pooled_class_dice(predictions: list[np.ndarray], truths: list[np.ndarray], names: tuple[str, ...]) -> dict[str, float]:
    """Dice of each class ``k`` = 1..len(names) pooled over the scans (class-index maps of equal
    shapes per scan); a class absent from every truth is left out, so a model is neither rewarded
    for leaving it out nor, on a per-scan mean, for the scans that lack it."""
    per_class = {}
    for k, name in enumerate(names, start=1):
        truth = sum(int(np.count_nonzero(t == k)) for t in truths)
        if truth:
            shared = sum(int(np.count_nonzero((p == k) & (t == k))) for p, t in zip(predictions, truths))
            predicted = sum(int(np.count_nonzero(p == k)) for p in predictions)
            per_class[name] = 2.0 * shared / (truth + predicted)
    return per_class


def finetune_config(size: Size, device: str, seed: int, recipe: Recipe = Recipe(), *, count: int) -> FinetuneConfig:
    """The benchmark's fine-tuning budget for a run with ``count`` labelled scans and recipe
    (patches of the default size, batch 4)."""
    return FinetuneConfig(max_epochs=size.epochs_for(count), steps_per_epoch=size.steps_per_epoch, device=device, seed=seed,
                          encoder_lr_scale=recipe.encoder_lr_scale, freeze_encoder_epochs=recipe.freeze_encoder_epochs,
                          encoder_batchnorm=recipe.encoder_batchnorm)


def labelled_subset(cases: list[PreparedCase], count: int, seed: int) -> list[PreparedCase]:
    """The ``count`` training scans labelled in a run of ``seed`` (a seeded permutation)."""
    return [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))[:count]]


def fine_tuned_model(mode: str, encoder: Path | None, train_cases: list[PreparedCase], count: int, config: FinetuneConfig,
                     routing_block: int | None = ROUTING_BLOCK, atlas: Atlas | None = None,
                     labels: tuple[str, ...] = BINARY) -> tuple[torch.nn.Module, dict]:
    """A model of arm ``mode`` fine-tuned on ``count`` training scans picked by ``config.seed`` (their
    labels already class indices of ``labels``): the DrasCLR U-Net from scratch or from ``encoder``
    (made for ``atlas``, default the shipped one; a scratch ablation with its architecture), or MONAI's SegResNet; and the fine-tuning statistics."""
    torch.manual_seed(config.seed)
    chosen = labelled_subset(train_cases, count, config.seed)
    pretrained = mode in PRETRAINING_ARMS
    if mode == "monai_segresnet":
        model, _ = build_model(list(labels), device=config.device, atlas=atlas, network="segresnet")
    else:
        model, _ = build_model(list(labels), pretrained=encoder if pretrained else None, device=config.device,
                               routing_block=routing_block, atlas=atlas, architecture=SCRATCH_ARMS.get(mode))
    return model, finetune(model, chosen, config, pretrained=pretrained)


def predicted_emphysema(model: torch.nn.Module, case: PreparedCase, device: str, overlap: float,
                        window: int = WINDOW) -> np.ndarray:
    """Binary emphysema (Z, Y, X) on the case's 1 mm lung grid."""
    probabilities = window_probabilities(model, case, device, mc_dropout=False, window=window, overlap=overlap, batch_size=None)
    return class_labels(probabilities) > 0


COLOURS = {"scratch": "tab:blue", "pretrained": "tab:orange", "unconditioned": "tab:green", "no_neighbour": "tab:purple",
           "monai_segresnet": "tab:brown", "scratch_unconditioned": "tab:cyan", "scratch_groupnorm": "tab:olive",
           "scratch_stride8": "tab:pink", "scratch_segresnet_like": "tab:gray", "pretrained_stride8": "tab:red",
           "unconditioned_stride8": "lime"}


def plot(result: dict, path: Path) -> None:
    """One panel per task: Dice (mean +- std over folds and seeds) against labelled scans for every
    arm, and the binary threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["arms"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        for arm, curve in result["arms"][task].items():
            counts = sorted(curve, key=int)
            axis.errorbar([int(c) for c in counts], [curve[c]["mean"] for c in counts], yerr=[curve[c]["std"] for c in counts],
                          marker="o", capsize=3, color=COLOURS[arm], label=arm)
        if task == "binary":
            axis.axhline(result["threshold_950"], color="grey", linestyle="--", label="HU < -950 threshold")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("labelled training scans")
        axis.set_ylabel("Dice, held-out patient" + (" (mean of 3 subtypes)" if task == "subtypes" else ""))
        axis.set_title(f"Label efficiency: {task}")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)



if __name__ == "__main__":
    sys.exit(main())
