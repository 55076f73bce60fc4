"""Is joint image-volume pretraining better than 2D-only SwAV? Three probes of held-out scans, every
arm at equal compute (issue 19).

Data (made in this run, seeded): an unlabelled pretraining cohort made from the real CTs lung1 and
lung2 (0-25 % emphysema), and held-out scans made from another patient, LIDC-IDRI-0001: two thirds
with 2-25 % synthetic emphysema, one third with none (``drasclr synth``; ``--size small`` uses
phantoms with disjoint seeds), so no held-out patient is seen in pretraining. Arms (the demo recipe's networks, configs/joint2d3d_demo.yaml,
at the size's budget):

* ``joint``: L_intra + masked slice prediction + L_inter in one stage, the volume losses reaching
  the ResNet trunk (``volume_backprop`` of the recipe), SwAV with slice and volume queues;
* ``intra_only`` (2D-only): L_intra alone, run for as many more steps as make its compute equal
  to the joint arm's (compute = trunk pixel passes: forward 1, backward 2, recomputation 1;
  the volume transformer's share is left out and is small);
* ``random``: the same architecture at its random initialisation;
* ablations (with ``--arms``), as joint with one part removed: ``joint_no_queue`` (no SwAV
  queues), ``joint_no_inter`` (no volume clustering: L_intra + masked slice prediction) and
  ``joint_no_masked`` (no masked slice prediction: L_intra + L_inter).

Measures, on the held-out scans (the exported encoder, prepared as ``embed_volume`` prepares a scan):

* slice probe: logistic regression of emphysema presence on a slice (labelled emphysema on
  more than 5 % of the slice's lung, the Fleischner "moderate" grade: at 1 % nearly every slice of
  a scan with 2-25 % emphysema would count, and the label would only tell scans apart) from the
  slice embedding; ROC AUC averaged over folds of whole scans, each holding healthy and emphysema
  scans, the regularisation chosen by inner folds of whole scans too (pooled out-of-fold scores,
  or inner folds that split scans, reward telling scans apart instead); slices with less than
  10 % of the scan's largest lung section are left out;
* severity probe: ridge regression of the scan's true emphysema percentage from the volume
  embedding, on the same folds of scans, out-of-fold R^2 pooled (and Pearson r);
* retrieval: every held-out scan is deformed once more (crop, rotation, scale, elastic warp:
  ``data.deform``, the same kind of change that makes different subjects of one source); the
  deformed copy's volume embedding is the query, the held-out originals the gallery (cosine);
  top-1 accuracy (chance 1 / n) and mean reciprocal rank.

``alternates`` repeats the probes on the ResNet's multi-scale pools (before the token projection,
which L_intra alone never trains) and on the mean slice token (no transformer), so a result can be
traced to the trunk or to the transformer, and gives the slice probe's AUC within each scan (its
slices ranked against one another, no shift between scans counted). ``baselines`` are lung
density features on the same folds (slice and scan mean HU, %LAA-950, %LAA-910, HU spread).
``diagnostics`` holds the spread of the held-out scans' volume embeddings: their RMS distance from
the mean embedding over the mean embedding's length (near 0: every scan gets nearly the same
vector, and cosine retrieval is decided by what is left).

Usage:
  python benchmarks/joint2d3d_eval.py --out benchmarks/results/joint2d3d_eval.json
  python benchmarks/joint2d3d_eval.py --seed 1 --out benchmarks/results/joint2d3d_eval_seed1.json
  python benchmarks/joint2d3d_eval.py --pool benchmarks/results/joint2d3d_eval.json \
      benchmarks/results/joint2d3d_eval_seed1.json --out benchmarks/results/joint2d3d_eval_seeds.json
  python benchmarks/joint2d3d_eval.py --size small --out /tmp/joint_eval.json     # CI-sized, phantoms

Writes the JSON and a PNG beside it (same name, ``.png``). ``--pool`` trains nothing: it reads
results of several seeds and writes each value's mean, standard deviation and per-seed values, and
the goal judged on the means (the plot shows the means as bars and the seeds as dots).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from drasclr_monailabel.data.deform import random_deformation
from drasclr_monailabel.data.sample_data import fetch_sample_data
from drasclr_monailabel.embed.random_init import export_random_init
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.probe.probes import logistic_probe, ridge_probe
from drasclr_monailabel.ssl.joint2d3d.config import Joint2d3dConfig, StageConfig
from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder
from drasclr_monailabel.ssl.joint2d3d.method import stack_settings
from drasclr_monailabel.ssl.joint2d3d.stacks import SliceStack, StackSettings, stack_from_volume
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.ssl.trainer import run_pretraining
from drasclr_monailabel.utils.atomic import write_json, write_with

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drasclr_steps import check_reuse, step_runner  # noqa: E402
from pretraining_curve import read_scalars  # noqa: E402

run_step = step_runner(__file__)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "joint2d3d_demo.yaml"
ARM_SCHEDULES = {
    "joint": "[{intra: 1.0, masked: 1.0, inter: 1.0, encoder_in_3d: true}]",
    "joint_no_queue": "[{intra: 1.0, masked: 1.0, inter: 1.0, encoder_in_3d: true}]",
    "joint_no_inter": "[{intra: 1.0, masked: 1.0, inter: 0.0, encoder_in_3d: true}]",
    "joint_no_masked": "[{intra: 1.0, masked: 0.0, inter: 1.0, encoder_in_3d: true}]",
    "intra_only": "[{intra: 1.0, masked: 0.0, inter: 0.0}]",
}
PRESENCE_FRACTION = 0.05  # a slice "has emphysema" when more than 5 % of its lung is (Fleischner: moderate)
MIN_LUNG_SECTION = 0.1  # slices with less lung than this share of the scan's largest section are left out
MEASURES = ("slice_presence_auc", "severity_r2", "retrieval_top1")
CHECKPOINT_EVERY = 50  # steps; a stopped run (Ctrl-C, SIGTERM) resumes from its last checkpoint when rerun


@dataclass(frozen=True)
class Size:
    """Cohorts and the pretraining budget of one benchmark size."""

    source: str
    pretrain_scans: int
    heldout_scans: int
    joint_steps: int
    recipe: tuple[str, ...]


# Cohort-sized clustering: 64 slice and 16 volume prototypes (a batch of 24 code rows and 4 volume
# views could not give them sharp codes without the queues), queues of about 10 and 16 steps.
# Slices twice the demo's size (96 px crops of 128 px squares, about 2.7 mm a pixel on a chest CT):
# at 48 px a pixel is about 7 mm and emphysema is hardly visible.
EVAL_RECIPE = ("clustering.slice_prototypes=64", "clustering.volume_prototypes=16", "clustering.slice_queue=256",
               "clustering.volume_queue=64", "optim.lr=0.05", "optim.warmup_steps=20",
               "data.store_size=128", "crops.global_size=96", "crops.local_size=48")
SIZES = {
    "small": Size("phantom", pretrain_scans=4, heldout_scans=9, joint_steps=8,
                  recipe=(*EVAL_RECIPE, "clustering.queue_start_steps=2", "optim.warmup_steps=2",
                          "data.store_size=64", "crops.global_size=48", "crops.local_size=32")),
    # 36 held-out scans: with 12, even the lung density features could not predict severity (the
    # generator's inspiration and noise move %LAA-950 as much as the emphysema does).
    "full": Size("real", pretrain_scans=16, heldout_scans=36, joint_steps=1200,
                 recipe=(*EVAL_RECIPE, "clustering.queue_start_steps=100")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a PNG plot is written beside it)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="benchmark size (default full)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, stacks and runs (default: beside --out)")
    parser.add_argument("--steps", type=int, help="joint arm's steps (default: the size's); the 2D-only arm's follow")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARM_SCHEDULES), default=["joint", "intra_only"],
                        help="trained arms (default joint intra_only; random always comes along)")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed of every arm")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                        help="pool these results of different seeds into --out instead of running")
    args = parser.parse_args(argv)
    if args.pool:
        write_pooled(args.pool, args.out, " ".join(["python", "benchmarks/joint2d3d_eval.py", *(argv if argv is not None else sys.argv[1:])]))
        return 0
    size = SIZES[args.size]
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be at least 1, got {args.steps}")
        size = replace(size, joint_steps=args.steps)
    workdir = args.workdir or args.out.with_suffix("").with_name(args.out.stem + "_work")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    cohorts = make_cohorts(size, workdir)
    configs = arm_configs(size, workdir, args.arms, args.seed)
    compute = {arm: {"steps": config.train.max_steps, "megapixel_passes_per_step": step_cost(config),
                     "megapixel_passes": round(step_cost(config) * config.train.max_steps, 1)} for arm, config in configs.items()}
    runs = {arm: workdir / f"{arm}_seed{args.seed}" for arm in [*configs, "random"]}  # a seed never reuses another's
    encoders: dict[str, Path] = {}
    for arm, config in configs.items():
        clock, cpu = time.perf_counter(), time.process_time()
        encoders[arm], trained = pretrain(config, cohorts["pretrain"][0], runs[arm])
        if trained:  # an arm exported by an earlier invocation is reused and not timed again
            seconds[f"pretrain_{arm}"] = round(time.perf_counter() - clock, 1)
            compute[arm]["cpu_seconds"] = round(time.process_time() - cpu, 1)
        else:
            compute[arm]["reused"] = True
    encoders["random"] = export_random_init(encoders["joint" if "joint" in encoders else args.arms[0]], runs["random"], seed=args.seed)

    clock = time.perf_counter()
    heldout = prepare_heldout(cohorts["heldout"], stack_settings(next(iter(configs.values()))), seed=args.seed)
    seconds["prepare_heldout"] = round(time.perf_counter() - clock, 1)
    result: dict = {"measures": {name: {} for name in (*MEASURES, "severity_pearson", "retrieval_mrr")},
                    "alternates": {"slice_presence_auc_within_scan": {}, "slice_presence_auc_trunk": {},
                                   "severity_r2_mean_token": {}, "retrieval_top1_mean_token": {}},
                    "diagnostics": {"volume_spread": {}}}
    for arm, folder in encoders.items():
        scores = evaluate(folder, heldout)
        for name, value in scores.items():
            group = next(key for key in ("measures", "alternates", "diagnostics") if name in result[key])
            result[group][name][arm] = value
        print(f"{arm:>15}: " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()), flush=True)
    result["baselines"] = density_baselines(heldout)
    result["chance"] = {"slice_presence_auc": 0.5, "severity_r2": 0.0, "retrieval_top1": 1 / len(heldout.scans)}
    result["goal"] = goal(result["measures"])
    result["targets"] = {arm: target_entropy(runs[arm], configs[arm]) for arm in configs}
    result["compute"] = compute
    result["heldout"] = {"scans": len(heldout.scans), "slices": int(len(heldout.presence)),
                         "slices_with_emphysema": float(heldout.presence.mean()),
                         "severity_percent": [float(heldout.severity.min()), float(heldout.severity.max())]}
    result["command"] = " ".join(["python", "benchmarks/joint2d3d_eval.py", *(argv if argv is not None else sys.argv[1:])])
    result["settings"] = {**asdict(size), "seed": args.seed, "device": "cpu (no GPU lent to this work)",
                          "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    result["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"goal joint > 2D-only > random: {result['goal']}; wrote {args.out}")
    return 0


def make_cohorts(size: Size, workdir: Path) -> dict[str, list[Path]]:
    """The unlabelled pretraining cohort and the held-out cohorts (another patient; phantoms:
    disjoint seeds). A third of the held-out scans have no emphysema, so that slices without it
    exist (in a scan with 2-25 % emphysema nearly every slice holds some)."""
    if size.source == "real":
        samples = fetch_sample_data(["lung1_image", "lung2_image", "lidc0001_image"])
        pretrain, heldout = [str(samples["lung1_image"]), str(samples["lung2_image"])], [str(samples["lidc0001_image"])]
    else:
        pretrain, heldout = ["phantom"], ["phantom"]
    healthy = size.heldout_scans // 3
    plan = {"pretrain": (pretrain, size.pretrain_scans, 700, ("0", "25")),
            "heldout_emphysema": (heldout, size.heldout_scans - healthy, 800, ("2", "25")),
            "heldout_healthy": (heldout, healthy, 801, ("0", "0"))}
    for name, (sources, n, seed, severity) in plan.items():
        if _manifest_rows(workdir / name / "manifest.csv") != n:
            run_step(["synth", "--n", str(n), "--out", str(workdir / name), "--seed", str(seed), "--overwrite", "--no-progress",
                      "--severity", *severity, "--source", *sources])
    return {"pretrain": [workdir / "pretrain"], "heldout": [workdir / "heldout_emphysema", workdir / "heldout_healthy"]}


def _manifest_rows(path: Path) -> int:
    """Scans listed in a cohort's manifest (0 when there is none)."""
    if not path.is_file():
        return 0
    with open(path) as fh:
        return sum(1 for _ in csv.DictReader(fh))


def arm_configs(size: Size, workdir: Path, arms: list[str], seed: int) -> dict[str, Joint2d3dConfig]:
    """Each trained arm's recipe; the 2D-only arm gets the steps that equal the joint arm's compute."""
    common = [*size.recipe, f"train.seed={seed}", "train.device=cpu", "train.progress=false", "train.log_every=10",
              f"train.checkpoint_every={CHECKPOINT_EVERY}", f"data.stack_dir={workdir / 'stacks'}"]
    configs = {}
    for arm in arms:
        extra = ["clustering.slice_queue=0", "clustering.volume_queue=0"] if arm == "joint_no_queue" else []
        configs[arm] = load_recipe(RECIPE, [*common, *extra, f"schedule={ARM_SCHEDULES[arm]}", f"train.max_steps={size.joint_steps}"])
    if "intra_only" in configs:
        reference = configs.get("joint") or load_recipe(RECIPE, [*common, f"schedule={ARM_SCHEDULES['joint']}"])
        steps = round(size.joint_steps * step_cost(reference) / step_cost(configs["intra_only"]))
        configs["intra_only"] = load_recipe(RECIPE, [*common, f"schedule={ARM_SCHEDULES['intra_only']}", f"train.max_steps={steps}"])
    return configs


def step_cost(config: Joint2d3dConfig) -> float:
    """Trunk work of one step (first stage), megapixel passes: every slice or crop through the
    ResNet counts its pixels once forward, twice more when it back-propagates, once more when
    recomputed."""
    stage: StageConfig = config.schedule[0]
    crops, data, s = config.crops, config.data, config.model.num_slices
    pixels = 0.0
    if stage.intra > 0:
        pixels += 3 * config.train.batch_size * (crops.global_crops * crops.global_size**2 + crops.local_crops * crops.local_size**2)
    if stage.uses_volumes:
        views = 2 * data.volumes_per_batch
        chosen = config.volume_backprop.slices if 0 < config.volume_backprop.slices < s else s
        backward = views * chosen if stage.encoder_in_3d else 0
        pixels += (views * s + (3 if config.volume_backprop.recompute else 2) * backward) * crops.global_size**2
    return round(pixels / 1e6, 4)


def pretrain(config: Joint2d3dConfig, cohort: Path, run: Path) -> tuple[Path, bool]:
    """Train one arm in this process, resuming a stopped run; returns the run folder (the export)
    and whether it was trained now (False: exported by an earlier invocation, reused). A run
    stopped by a signal ends the benchmark (rerunning the same command resumes it); a finished one
    is reused only when its recipe is ``config``."""
    if (run / "encoder.json").is_file():
        check_reuse(__file__, run, config)
        return run, False
    result = run_pretraining(config, cohort, run, resume=(run / "checkpoints" / "last.pt").is_file())
    if not result.completed:
        raise SystemExit(f"{run}: stopped at step {result.step} of {result.total_steps}; "
                         "run the same command again to resume from the last checkpoint")
    return run, True


@dataclass
class Heldout:
    """The held-out scans ready to embed, and what the probes predict.

    Attributes:
        scans / deformed: slice stacks of the originals and of their deformed copies.
        severity: float (n,) true emphysema percentage of each scan.
        folds: (train, test) scan indices; every test fold holds healthy and emphysema scans.
        slice_index: per scan, int (k_i,) stack slices used by the slice probe.
        presence: int (sum k_i,) 1 where the slice has emphysema; slice_scan: its scan.
        slice_density / scan_density: float (., 4) lung mean HU, %LAA-950, %LAA-910, HU spread.
    """

    scans: list[SliceStack]
    deformed: list[SliceStack]
    severity: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    slice_index: list[np.ndarray]
    presence: np.ndarray
    slice_scan: np.ndarray
    slice_density: np.ndarray
    scan_density: np.ndarray


def prepare_heldout(cohorts: list[Path], settings: StackSettings, seed: int) -> Heldout:
    """Stacks, slice labels and density features of every held-out scan, and a deformed copy of each."""
    rows = []
    for group, cohort in enumerate(cohorts):
        with open(cohort / "manifest.csv") as fh:
            rows += [{**row, "folder": cohort, "group": group} for row in csv.DictReader(fh)]
    scans, deformed, indices, presence, owner, slice_density, scan_density = [], [], [], [], [], [], []
    for number, row in enumerate(rows):
        volume = read_ct(row["folder"] / row["image"])
        lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(row["folder"] / row["lungs"])))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(row["folder"] / row["label"])))
        stack = stack_from_volume(volume, settings)
        canonical = volume.canonical()  # the stack's orientation; its slice k lies at source slice k x spacing / z spacing
        hu, lung, emphysema = canonical.hu, volume.with_hu(lungs).canonical().hu, volume.with_hu(label).canonical().hu
        source = np.rint(np.arange(stack.pixels.shape[0]) * settings.slice_spacing_mm / canonical.spacing[2]).astype(int)
        section = (lung[source] > 0).sum(axis=(1, 2))
        keep = np.flatnonzero(section >= MIN_LUNG_SECTION * section.max())
        for k in keep:
            inside = lung[source[k]] > 0
            presence.append(int((emphysema[source[k]][inside] > 0).mean() > PRESENCE_FRACTION))
            slice_density.append(_density(hu[source[k]][inside]))
        scans.append(stack)
        indices.append(keep)
        owner += [number] * len(keep)
        scan_density.append(_density(hu[lung > 0]))
        moved, _ = random_deformation(volume, lungs.astype(np.uint8), np.random.default_rng([seed, number, 9]))
        deformed.append(stack_from_volume(moved, settings))
    return Heldout(scans, deformed, np.array([float(r["severity"]) for r in rows]), mixed_folds(np.array([r["group"] for r in rows])),
                   indices, np.array(presence), np.array(owner), np.array(slice_density), np.array(scan_density))


def mixed_folds(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of scans (as many as the smallest group has scans, at most 6), each scan of a group
    dealt to the folds in turn, so every test fold holds scans of every group."""
    folds = min(6, int(np.bincount(groups).min()))
    fold_of = np.zeros(len(groups), dtype=int)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        fold_of[members] = np.arange(len(members)) % folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]


def _density(hu: np.ndarray) -> list[float]:
    hu = hu.astype(np.float64)
    return [hu.mean(), (hu < -950).mean() * 100, (hu < -910).mean() * 100, hu.std()]


def evaluate(folder: Path, heldout: Heldout) -> dict[str, float]:
    """Every measure and alternate of one exported encoder."""
    embedder = JointEmbedder.from_dir(folder)
    tokens, trunk, volumes, mean_tokens = [], [], [], []
    for stack, keep in zip(heldout.scans, heldout.slice_index):
        token, pools = slice_features(embedder, stack.pixels[keep])
        tokens.append(token)
        trunk.append(pools)
        sampled, volume = embedder.volume(stack)
        volumes.append(volume)
        mean_tokens.append(sampled.mean(axis=0))
    queries = [embedder.volume(stack) for stack in heldout.deformed]
    slice_splits = slice_folds(heldout)
    scan_splits = heldout.folds
    severity = ridge_probe(np.stack(volumes), heldout.severity, scan_splits).pooled
    top1, mrr = retrieval(np.stack([q[1] for q in queries]), np.stack(volumes))
    token_auc, token_auc_within = presence_aucs(np.concatenate(tokens), heldout, slice_splits)
    return {
        "slice_presence_auc": token_auc,
        "slice_presence_auc_within_scan": token_auc_within,
        "severity_r2": severity["r2"], "severity_pearson": severity["pearson_r"], "retrieval_top1": top1, "retrieval_mrr": mrr,
        "slice_presence_auc_trunk": presence_aucs(np.concatenate(trunk), heldout, slice_splits)[0],
        "severity_r2_mean_token": ridge_probe(np.stack(mean_tokens), heldout.severity, scan_splits).pooled["r2"],
        "retrieval_top1_mean_token": retrieval(np.stack([q[0].mean(axis=0) for q in queries]), np.stack(mean_tokens))[0],
        "volume_spread": relative_spread(np.stack(volumes)),
    }


@torch.no_grad()
def slice_features(embedder: JointEmbedder, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slice tokens (k, d) and the trunk's multi-scale pools (k, C1 + ... + C4) of stack slices
    (k, N, N) in [0, 1], resized to the training slice size as embedding does."""
    squares = torch.from_numpy(np.asarray(pixels, dtype=np.float32))[:, None]
    size = embedder.slice_size
    x = 2 * F.interpolate(squares, size=(size, size), mode="bilinear", antialias=True, align_corners=False) - 1
    pools = embedder.encoder.slices.multi_scale(x)
    return embedder.encoder.slices.token(pools).numpy(), pools.numpy()


def slice_folds(heldout: Heldout) -> list[tuple[np.ndarray, np.ndarray]]:
    """The scan folds applied to the slices (a scan's slices stay together)."""
    return [(np.flatnonzero(np.isin(heldout.slice_scan, train)), np.flatnonzero(np.isin(heldout.slice_scan, test)))
            for train, test in heldout.folds]


def presence_aucs(features: np.ndarray, heldout: Heldout, splits: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The slice presence probe (inner folds of whole scans): mean over folds of its ROC AUC, and
    the mean over scans that hold both kinds of slice of the AUC among that scan's slices. A test
    fold holds three scans, so its AUC mixes telling scans apart (a shift shared by all slices of
    a scan) with telling a scan's slices apart; the second number is the latter alone."""
    probe = logistic_probe(features, heldout.presence, splits, groups=heldout.slice_scan)
    folds = [v for v in probe.folds["auc"] if np.isfinite(v)]
    within = [roc_auc_score(heldout.presence[rows], probe.predictions[rows])
              for rows in (np.flatnonzero(heldout.slice_scan == scan) for scan in np.unique(heldout.slice_scan))
              if len(np.unique(heldout.presence[rows])) == 2]
    return (float(np.mean(folds)) if folds else float("nan")), (float(np.mean(within)) if within else float("nan"))


def retrieval(queries: np.ndarray, gallery: np.ndarray) -> tuple[float, float]:
    """Query i should find gallery row i (cosine): top-1 accuracy and mean reciprocal rank."""
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    unit_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True).clip(1e-12)
    similarity = unit_q @ unit_g.T
    own = np.diag(similarity)
    ranks = 1 + (similarity > own[:, None]).sum(axis=1)
    return float((ranks == 1).mean()), float((1.0 / ranks).mean())


def relative_spread(embeddings: np.ndarray) -> float:
    """RMS distance of the rows (n, d) from their mean, over the mean's length."""
    mean = embeddings.mean(axis=0)
    return float(np.sqrt(((embeddings - mean) ** 2).sum(axis=1).mean()) / max(float(np.linalg.norm(mean)), 1e-12))


def density_baselines(heldout: Heldout) -> dict[str, float]:
    severity = ridge_probe(heldout.scan_density, heldout.severity, heldout.folds).pooled
    auc, within = presence_aucs(heldout.slice_density, heldout, slice_folds(heldout))
    return {"slice_presence_auc": auc, "slice_presence_auc_within_scan": within,
            "severity_r2": severity["r2"], "severity_pearson": severity["pearson_r"]}


def goal(measures: dict[str, dict[str, float]]) -> dict[str, bool | None]:
    """joint > intra_only > random per measure (None when an arm is missing)."""
    verdict: dict[str, bool | None] = {}
    for name in MEASURES:
        values = measures[name]
        verdict[name] = values["joint"] > values["intra_only"] > values["random"] if {"joint", "intra_only"} <= set(values) else None
    return verdict


def target_entropy(run: Path, config: Joint2d3dConfig) -> dict[str, float | None]:
    """Mean SwAV target entropy (nats) over the last fifth of the run's steps, beside log K (uniform).
    Read from the run's TensorBoard events, which hold every logged step also when the run was
    stopped and resumed, or trained by an earlier invocation."""
    names = ("target_entropy_intra", "target_entropy_inter")
    events = run / "tensorboard"
    scalars = read_scalars(events, tuple(f"train/{name}" for name in names)) if events.is_dir() else {}

    def mean(name: str) -> float | None:
        series = scalars.get(f"train/{name}")
        if series is None or not len(series):
            return None
        tail = series[series[:, 0] >= 0.8 * series[:, 0].max(), 1]
        return round(float(np.mean(tail)), 3)

    c = config.clustering
    return {"intra": mean("target_entropy_intra"), "intra_uniform": round(float(np.log(c.slice_prototypes)), 3),
            "inter": mean("target_entropy_inter"), "inter_uniform": round(float(np.log(c.volume_prototypes)), 3),
            "slice_queue": c.slice_queue, "volume_queue": c.volume_queue}


def write_pooled(paths: list[Path], out: Path, command: str) -> None:
    """Mean, standard deviation and per-seed values of every measure, alternate and diagnostic of
    the runs ``paths`` (one per seed), for the arms every run has; the goal on the means."""
    runs = [json.loads(path.read_text()) for path in paths]
    seeds = [run["settings"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--pool: the results repeat a seed ({seeds}); pool runs of different seeds")
    pooled: dict = {"seeds": seeds, "sources": [str(path) for path in paths], "command": command}
    for group in ("measures", "alternates", "diagnostics"):
        pooled[group], pooled[f"{group}_per_seed"] = {}, {}
        for name in runs[0].get(group, {}):
            arms = [arm for arm in runs[0][group][name] if all(arm in run.get(group, {}).get(name, {}) for run in runs)]
            values = {arm: [run[group][name][arm] for run in runs] for arm in arms}
            pooled[group][name] = {arm: float(np.mean(v)) for arm, v in values.items()}
            pooled[f"{group}_per_seed"][name] = {arm: {"values": v, "std": float(np.std(v))} for arm, v in values.items()}
    pooled["baselines"], pooled["chance"] = runs[0]["baselines"], runs[0]["chance"]  # the held-out data do not depend on the seed
    pooled["goal"] = goal(pooled["measures"])
    write_json(out, pooled)
    plot(pooled, out.with_suffix(".png"))
    print(f"goal joint > 2D-only > random on the means of seeds {seeds}: {pooled['goal']}; wrote {out}")


def plot(result: dict, path: Path) -> None:
    """One bar chart per measure: the arms, chance (dashed) and the density baseline (dotted); the
    seeds as dots when the result pools several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"slice_presence_auc": "Slice probe: emphysema presence (AUC)", "severity_r2": "Volume probe: severity (R^2)",
              "retrieval_top1": "Same scan under deformation (top-1)"}
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, name in zip(axes, MEASURES):
        arms = list(result["measures"][name])
        axis.bar(arms, [result["measures"][name][a] for a in arms], color=["tab:blue" if a.startswith("joint") else "tab:orange"
                                                                          if a == "intra_only" else "tab:grey" for a in arms])
        for position, arm in enumerate(arms):
            seeds = result.get("measures_per_seed", {}).get(name, {}).get(arm, {}).get("values", [])
            axis.plot([position] * len(seeds), seeds, "k.", markersize=6)
        axis.axhline(result["chance"][name], color="black", linestyle="--", linewidth=1, label="chance")
        if name in result["baselines"]:
            axis.axhline(result["baselines"][name], color="tab:green", linestyle=":", label="lung density features")
        axis.set_title(titles[name], fontsize=10)
        axis.tick_params(axis="x", rotation=20)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)



if __name__ == "__main__":
    sys.exit(main())
