"""Does DrasCLR pretraining learn anything? Patch-level probes of held-out subjects, every arm at
equal compute.

Data (made in this run, seeded): an unlabelled pretraining cohort made from the real CTs lung1
and lung2 and a held-out cohort made from another patient, LIDC-IDRI-0001, both with synthetic
emphysema inserted (``drasclr synth``; ``--size small`` uses phantoms with disjoint seeds), so no
held-out patient is seen in pretraining. Arms:

* ``pretrained``: DrasCLR (location-conditioned encoder, local + neighbour InfoNCE);
* ``unconditioned``: the same run with plain convolutions of the same shapes
  (``model.encoder.conditioned=false``), the paper's "no anatomy" ablation;
* ``random``: the encoder at its random initialisation;
* ``shuffle_bn``: as pretrained, keys embedded in two random sub-batches (``moco.key_bn_splits=2``,
  the one-process shuffle-BN), to choose it by measurement;
* ``other_landmark_negatives``: as pretrained, plus 256 negatives drawn from the other landmarks'
  queues (``moco.other_landmark_negatives=256``).

Every trained arm runs the same steps and batch; every arm gets the same precise BatchNorm
statistics recomputation before it is measured (``precise_bn``), so the random arm is not
handicapped by untouched statistics. ``pretrained_training_bn`` is the pretrained encoder with
the running statistics that training left behind (one landmark per batch), to choose the
statistics by measurement.

Measures, on the un-augmented 32^3 patches of every valid landmark of every held-out subject:

* landmark retrieval: the share of patches whose nearest embedding (cosine) among the other
  held-out subjects' patches lies at the same landmark or an adjacent one (one grid step, 26 mm,
  on each axis); ``retrieval_exact`` counts the same landmark only. Chance is printed beside it.
  A conditioned encoder is told each patch's landmark (its location input), so its retrieval
  partly reads that input back; ``retrieval_image_only`` gives every patch the same location
  (the atlas centre), which leaves only what the image carries;
* linear probe: ridge regression of each patch's emphysema fraction (labelled emphysema voxels /
  lung voxels in the patch) on the embedding, cross-validated by subject (out-of-fold R^2 pooled
  over folds; alpha chosen by inner folds of whole subjects). ``hu_features`` (mean HU, %LAA-950,
  %LAA-910, HU spread in the patch's lung) is the density baseline on the same folds, and
  ``single_hu_feature_probe_r2`` the same probe of mean HU alone and of %LAA-950 alone;
* density probes (``density_probe_r2``): the same ridge probe of the patch lung's mean HU and HU
  standard deviation, what a patch embedding must carry before it can carry emphysema; a
  sceptic's check that a trained arm learnt more than a random one even where the emphysema
  probe shows nothing;
* pyramid probes (``pyramid_probe_r2``): the same ridge probes (emphysema fraction, mean HU,
  %LAA-950) of the encoder's feature pyramid, each map averaged over the patch and concatenated
  (8 + 16 + 32 + 64 + 128 + 128 = 376 values with the default widths): the features the
  segmentation decoder reads through its skip connections, where the embedding ``h`` is one
  128-value summary of them;
* ``within_subject_r``: the mean over held-out subjects of the correlation between the emphysema
  probe's out-of-fold predictions and the truth inside one subject (does it rank one patient's
  patches); ``lung_core_probe_r2``: the emphysema probes on the patches that are at least 90 %
  lung only (the embedding sees the whole patch, the target counts lung voxels).

Every arm's held-out embeddings are saved in the work folder (``embeddings_<arm>.npz``). Run again
with the same ``--workdir``, the command reuses its cohorts and trained encoders (listed in
``reused_encoders``) and measures again, so new probes need no new pretraining.

``--seeds 0 1 2`` runs every arm once per pretraining seed (``train.seed``: initialisation,
sampling order, augmentation; the cohorts and held-out patches stay the same) and reports the mean
over seeds under the usual keys, ``std_over_seeds`` (same shape) and ``per_seed`` (each seed's
result). The recipe's seed (0) lives in the work folder itself, other seeds in ``seed_<n>/``, so a
one-seed work folder is reused as seed 0.

Usage:
  python benchmarks/pretraining_signal.py --out benchmarks/results/pretraining_signal.json
  python benchmarks/pretraining_signal.py --size small --out /tmp/signal.json   # CI-sized, phantoms
  python benchmarks/pretraining_signal.py --arms pretrained unconditioned --seeds 0 1 2 --out /tmp/seeds.json

Writes the JSON (``{"retrieval": {arm: ..}, "retrieval_exact": {..}, "probe_r2": {..},
"density_probe_r2": {"mean_hu": {arm: ..}, "hu_std": {..}}, "pyramid_probe_r2": {"emphysema": {arm: ..},
"mean_hu": {..}, "laa950": {..}}, "within_subject_r": {"h": {arm: ..}, "pyramid": {..}, "hu_features": ..},
"lung_core_probe_r2": {..}, "single_hu_feature_probe_r2": {..}, "queue_fill": {..}, "command": ..}``, with
``"std_over_seeds"`` and ``"per_seed"`` beside them for several seeds) and a PNG beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import yaml
from sklearn.model_selection import GroupKFold

from drasclr_monailabel.anatomy.atlas import load_default_atlas
from drasclr_monailabel.anatomy.landmarks import PATCH_SIZE, STEP
from drasclr_monailabel.config import to_dict
from drasclr_monailabel.data.sample_data import fetch_sample_data
from drasclr_monailabel.embed.patient import landmark_embeddings
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.models.export import load_encoder, save_encoder
from drasclr_monailabel.probe.probes import ridge_probe
from drasclr_monailabel.segmentation.case import PreparedCase, prepare_case
from drasclr_monailabel.ssl.distributed import setup
from drasclr_monailabel.ssl.drasclr import DrasclrMethod
from drasclr_monailabel.ssl.patches import read_crop
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.utils.atomic import write_json, write_text, write_with

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drasclr_steps import check_reuse, export_checkpoint, step_runner  # noqa: E402

run_step = step_runner(__file__)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "drasclr_demo.yaml"
# Trained arms and their recipe changes (all at the same budget).
TRAINED_ARMS = {
    "pretrained": [],
    "unconditioned": ["model.encoder.conditioned=false"],
    "shuffle_bn": ["moco.key_bn_splits=2"],
    "other_landmark_negatives": ["moco.other_landmark_negatives=256"],
}

TARGETS = {
    "emphysema": lambda patches: patches.emphysema,
    "mean_hu": lambda patches: patches.hu_features[:, 0],
    "laa950": lambda patches: patches.hu_features[:, 1],
    "hu_std": lambda patches: patches.hu_features[:, 3],
}
"""Every probe target by name, each read from :class:`HeldoutPatches`."""
DENSITY_TARGETS = ("mean_hu", "hu_std")
"""Targets of the density probes of h."""
PYRAMID_TARGETS = ("emphysema", "mean_hu", "laa950")
"""Targets of the pyramid probes."""
LUNG_CORE = 0.9
"""Lung share of a patch above which it counts as inside the lung (``lung_core_probe_r2``)."""


@dataclass(frozen=True)
class Size:
    """Cohorts and the pretraining budget of one benchmark size."""

    source: str
    pretrain_scans: int
    heldout_scans: int
    steps: int
    batch_size: int
    queue_size: int
    lr: float
    measured_landmarks: int | None = None  # a seeded subset of atlas landmarks to measure (None: all)


SIZES = {
    "small": Size("phantom", pretrain_scans=6, heldout_scans=3, steps=40, batch_size=6, queue_size=16, lr=1.0,
                  measured_landmarks=80),
    "full": Size("real", pretrain_scans=16, heldout_scans=6, steps=400, batch_size=8, queue_size=16, lr=1.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a PNG plot is written beside it)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="benchmark size (default full)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, cache and runs (default: beside --out)")
    parser.add_argument("--steps", type=int, help="pretraining steps per trained arm (default: the size's)")
    parser.add_argument("--arms", nargs="+", choices=sorted(TRAINED_ARMS), default=list(TRAINED_ARMS),
                        help="trained arms to run (default all; random and pretrained_training_bn come with pretrained)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                        help="pretraining seeds (train.seed), every arm once per seed; the JSON reports the mean over "
                             "seeds, with std_over_seeds and per_seed when there are several (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every trained arm (repeatable), e.g. optim.lr=2.0")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be at least 1, got {args.steps}")
        size = Size(**{**asdict(size), "steps": args.steps})
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat a seed, got {args.seeds}")
    workdir = args.workdir or args.out.with_suffix("").with_name(args.out.stem + "_work")
    started = time.perf_counter()
    timings: dict[str, float] = {}

    cohorts = make_cohorts(size, workdir)
    clock = time.perf_counter()
    run_step(["preprocess", str(cohorts["pretrain"] / "manifest.csv"), "--out", str(workdir / "cache"), "--no-progress"])
    timings["preprocess"] = round(time.perf_counter() - clock, 1)
    arms = ["pretrained", *(arm for arm in args.arms if arm != "pretrained")]
    reused = reusable_runs(workdir, args.seeds, arms, size, args.overrides)
    clock = time.perf_counter()
    patches = heldout_patches(prepare_cohort(cohorts["heldout"]), measured_landmarks(size))
    timings["prepare_heldout"] = round(time.perf_counter() - clock, 1)

    splits = subject_splits(patches.subjects)
    core = patches.lung_fraction >= LUNG_CORE
    per_seed: dict[str, dict] = {}
    for seed in args.seeds:
        folder = seed_folder(workdir, seed)
        overrides = recipe_overrides(size, args.overrides, seed)
        encoders = train_arms(workdir / "cache", folder, arms, overrides, timings, seed)
        per_seed[str(seed)] = measure_arms(encoders, patches, splits, core, folder, seed)
        per_seed[str(seed)]["queue_fill"] = {arm: queue_fill(folder / arm) for arm in arms}
    result = mean_over_seeds(list(per_seed.values()))
    if len(args.seeds) > 1:
        result["std_over_seeds"] = std_over_seeds(list(per_seed.values()))
        result["per_seed"] = per_seed
    hu_probe = ridge_probe(patches.hu_features, patches.emphysema, splits, patches.subjects)
    result["probe_r2"]["hu_features"] = hu_probe.pooled["r2"]
    result["within_subject_r"]["hu_features"] = within_subject_r(hu_probe.predictions, patches)
    result["lung_core_probe_r2"]["hu_features"] = lung_core_r2(patches.hu_features, patches, core)
    result["lung_core_probe_r2"]["patches"] = int(core.sum())
    result["single_hu_feature_probe_r2"] = {name: ridge_probe(TARGETS[name](patches)[:, None], patches.emphysema, splits,
                                                              patches.subjects).pooled["r2"] for name in ("mean_hu", "laa950")}
    result["retrieval_chance"] = chance_retrieval(patches)
    result["heldout"] = {"subjects": int(len(np.unique(patches.subjects))), "patches": int(len(patches.subjects)),
                         "emphysema_fraction_mean": float(patches.emphysema.mean())}
    result["command"] = " ".join(["python", "benchmarks/pretraining_signal.py", *(argv if argv is not None else sys.argv[1:])])
    result["settings"] = {**asdict(size), "seeds": args.seeds, "overrides": recipe_overrides(size, args.overrides, None),
                          "device": "cpu", "device_name": platform.processor(), "threads": torch.get_num_threads()}
    result["seconds"] = {**timings, "total": round(time.perf_counter() - started, 1)}
    result["reused_encoders"] = reused  # found in --workdir from an earlier run: their pretrain seconds are not this run's
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"HU features probe R^2 {result['probe_r2']['hu_features']:.3f}; chance retrieval {result['retrieval_chance']:.3f}; "
          f"wrote {args.out}")
    return 0


def seed_folder(workdir: Path, seed: int) -> Path:
    """Where one seed's runs and embeddings live: the work folder itself for the recipe's seed, so a
    work folder of a one-seed run is reused as seed 0 of a several-seed run."""
    return workdir if seed == load_recipe(RECIPE).train.seed else workdir / f"seed_{seed}"


def reusable_runs(workdir: Path, seeds: list[int], arms: list[str], size: Size, extra: list[str]) -> list[str]:
    """The finished runs (trained arms and random inits) that this invocation will reuse, as paths
    relative to ``workdir``; ends the benchmark before any training when one of them was made with
    another recipe than this invocation asks for (``drasclr_steps.check_reuse``)."""
    reused = []
    for seed in seeds:
        folder = seed_folder(workdir, seed)
        for arm in [*arms, "random"]:
            if (folder / arm / "encoder.json").is_file():
                check_reuse(__file__, folder / arm, load_recipe(RECIPE, [*recipe_overrides(size, extra, seed), *TRAINED_ARMS.get(arm, [])]))
                reused.append(str((folder / arm).relative_to(workdir)))
    return reused


def train_arms(cache: Path, folder: Path, arms: list[str], overrides: list[str], timings: dict[str, float],
               seed: int) -> dict[str, Path]:
    """Every trained arm of one seed, its random init and the pretrained arm's training-statistics
    export; returns each arm's encoder folder."""
    encoders: dict[str, Path] = {}
    for arm in arms:
        clock = time.perf_counter()
        encoders[arm] = pretrain(cache, folder / arm, [*overrides, *TRAINED_ARMS[arm]])
        timings[f"pretrain_{arm}_seed{seed}"] = round(time.perf_counter() - clock, 1)
    encoders["random"] = random_encoder(cache, folder / "random", overrides)
    encoders["pretrained_training_bn"] = export_checkpoint(__file__, folder / "pretrained" / "checkpoints" / "last.pt",
                                                           folder / "pretrained_training_bn")
    return encoders


def measure_arms(encoders: dict[str, Path], patches: HeldoutPatches, splits: list[tuple[np.ndarray, np.ndarray]],
                 core: np.ndarray, folder: Path, seed: int) -> dict:
    """Every measure of every arm's encoder on the held-out patches (one seed; ``splits`` the
    probes' subject folds, ``core`` bool (P,) the patches at least LUNG_CORE lung); saves each
    arm's embeddings in ``folder``."""
    result: dict = {"retrieval": {}, "retrieval_exact": {}, "retrieval_image_only": {}, "probe_r2": {},
                    "density_probe_r2": {name: {} for name in DENSITY_TARGETS},
                    "pyramid_probe_r2": {name: {} for name in PYRAMID_TARGETS},
                    "within_subject_r": {"h": {}, "pyramid": {}}, "lung_core_probe_r2": {"h": {}, "pyramid": {}}}
    for arm, encoder in encoders.items():
        embeddings = embed(encoder, patches)
        result["retrieval"][arm], result["retrieval_exact"][arm] = retrieval(embeddings, patches)
        result["retrieval_image_only"][arm] = retrieval(embed(encoder, patches, same_location=True), patches)[0]
        emphysema_probe = ridge_probe(embeddings, patches.emphysema, splits, patches.subjects)
        result["probe_r2"][arm] = emphysema_probe.pooled["r2"]
        for name in DENSITY_TARGETS:
            result["density_probe_r2"][name][arm] = ridge_probe(embeddings, TARGETS[name](patches), splits, patches.subjects).pooled["r2"]
        pyramid = embed(encoder, patches, pooled_pyramid=True)
        save_embeddings(folder / f"embeddings_{arm}.npz", embeddings, pyramid, patches)
        pyramid_probes = {name: ridge_probe(pyramid, TARGETS[name](patches), splits, patches.subjects) for name in PYRAMID_TARGETS}
        for name, probe in pyramid_probes.items():
            result["pyramid_probe_r2"][name][arm] = probe.pooled["r2"]
        for name, features, probe in (("h", embeddings, emphysema_probe), ("pyramid", pyramid, pyramid_probes["emphysema"])):
            result["within_subject_r"][name][arm] = within_subject_r(probe.predictions, patches)
            result["lung_core_probe_r2"][name][arm] = lung_core_r2(features, patches, core)
        print(f"seed {seed} {arm:>24}: retrieval {result['retrieval'][arm]:.3f} (exact {result['retrieval_exact'][arm]:.3f}, "
              f"image only {result['retrieval_image_only'][arm]:.3f}), probe R^2 {result['probe_r2'][arm]:.3f} "
              f"(mean HU {result['density_probe_r2']['mean_hu'][arm]:.3f}); pyramid probe R^2 "
              f"{result['pyramid_probe_r2']['emphysema'][arm]:.3f}", flush=True)
    return result


def mean_over_seeds(results: list[dict]) -> dict:
    """The seeds' results (dicts of the same shape) with every number replaced by its mean over
    seeds; a value equal in every seed (a queue size) is kept as it is, None stays None."""
    return _combine(results, lambda values: values[0] if all(v == values[0] for v in values) else float(np.mean(values)))


def std_over_seeds(results: list[dict]) -> dict:
    """The same shape as :func:`mean_over_seeds`, each number the standard deviation over seeds
    (population, ddof 0)."""
    return _combine(results, lambda values: float(np.std(values)))


def _combine(results: list[dict], reduce: Callable[[list], float]) -> dict:
    """Walk dicts of one shape together and ``reduce`` each leaf's values (None where any is None)."""
    combined: dict = {}
    for key, first in results[0].items():
        values = [result[key] for result in results]
        if isinstance(first, dict):
            combined[key] = _combine(values, reduce)
        else:
            combined[key] = None if any(v is None for v in values) else reduce(values)
    return combined


def save_embeddings(path: Path, h: np.ndarray, pyramid: np.ndarray, patches: HeldoutPatches) -> None:
    """One arm's held-out embeddings (h (n, 128), pooled pyramid (n, 376)) with each patch's subject,
    landmark and targets, for probes beyond this script's."""
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as file:  # a file object: np.savez would add ".npz" to a path
            np.savez(file, h=h, pyramid=pyramid, subjects=patches.subjects, landmarks=patches.landmarks,
                     emphysema=patches.emphysema, hu_features=patches.hu_features, lung_fraction=patches.lung_fraction)
    write_with(path, writer)


def make_cohorts(size: Size, workdir: Path) -> dict[str, Path]:
    """The unlabelled pretraining cohort and the held-out cohort (another patient; phantoms: disjoint seeds)."""
    if size.source == "real":
        samples = fetch_sample_data(["lung1_image", "lung2_image", "lidc0001_image"])
        sources = {"pretrain": [str(samples["lung1_image"]), str(samples["lung2_image"])],
                   "heldout": [str(samples["lidc0001_image"])]}
    else:
        sources = {"pretrain": ["phantom"], "heldout": ["phantom"]}
    cohorts = {}
    for name, n, seed in (("pretrain", size.pretrain_scans, 500), ("heldout", size.heldout_scans, 600)):
        folder = workdir / name
        if not (folder / "manifest.csv").is_file():
            run_step(["synth", "--n", str(n), "--out", str(folder), "--seed", str(seed), "--overwrite", "--no-progress",
                      "--severity", "2", "25", "--source", *sources[name]])
        cohorts[name] = folder
    return cohorts


def recipe_overrides(size: Size, extra: list[str], seed: int | None) -> list[str]:
    """The demo recipe at this size's budget: steps, batch, queue and learning rate, and the seed
    (None: the recipe's)."""
    seeded = [] if seed is None else [f"train.seed={seed}"]
    return [f"train.max_steps={size.steps}", f"train.batch_size={size.batch_size}", f"moco.queue_size={size.queue_size}",
            f"optim.lr={size.lr}", "train.progress=false", "train.log_every=20", "train.device=cpu", *seeded, *extra]


def pretrain(cache: Path, run: Path, overrides: list[str]) -> Path:
    """Train one arm (resuming a stopped run; a finished one is reused, checked by
    :func:`reusable_runs`); returns its run folder, which holds the export."""
    if not (run / "encoder.json").is_file():
        resume = ["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []
        run_step(["pretrain", "--config", str(RECIPE), "--cache", str(cache), "--out", str(run), *resume,
                  *[a for o in overrides for a in ("--set", o)]])
    return run


def random_encoder(cache: Path, out: Path, overrides: list[str]) -> Path:
    """The trained arms' encoder at its random initialisation (same seed), with precise BatchNorm
    statistics on the same cache; its recipe is kept beside it (``config.yaml``, as a trained run's)
    so that a rerun reuses it only for the same recipe."""
    if not (out / "encoder.json").is_file():
        config = load_recipe(RECIPE, overrides)
        torch.manual_seed(config.train.seed)
        method = DrasclrMethod(config, setup("cpu"), cache)
        method.before_export()
        spec = method.export_spec()
        state = {k[len(spec.state_dict_prefix):]: v for k, v in method.network.state_dict().items() if k.startswith(spec.state_dict_prefix)}
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        save_encoder(out, state, {**spec.metadata, "training": {"steps": 0}})
    return out


def prepare_cohort(cohort: Path) -> list[PreparedCase]:
    """Every held-out scan on its 1 mm lung grid, with its labels and landmarks."""
    with open(cohort / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    cases = []
    for row in rows:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / row["label"])))
        cases.append(prepare_case(read_ct(cohort / row["image"]), label_map=label, case_id=row["id"]))
    return cases


@dataclass(frozen=True)
class HeldoutPatches:
    """The valid landmark patches of the held-out subjects, one row each.

    Attributes:
        cases: the prepared scans; subjects: int (P,) index into them; landmarks: int (P,).
        emphysema: float (P,) labelled emphysema voxels / lung voxels in the 32^3 patch.
        hu_features: float (P, 4) mean HU, %LAA-950, %LAA-910 and HU standard deviation in the
            patch's lung.
        lung_fraction: float (P,) lung voxels / all voxels of the patch.
    """

    cases: list[PreparedCase]
    subjects: np.ndarray
    landmarks: np.ndarray
    emphysema: np.ndarray
    hu_features: np.ndarray
    lung_fraction: np.ndarray


def measured_landmarks(size: Size) -> np.ndarray:
    """bool (L,): the atlas landmarks measured (a seeded subset at small sizes, the same for every subject)."""
    count = load_default_atlas().n_landmarks
    keep = np.ones(count, dtype=bool)
    if size.measured_landmarks is not None and size.measured_landmarks < count:
        keep[:] = False
        keep[np.random.default_rng(0).choice(count, size.measured_landmarks, replace=False)] = True
    return keep


def heldout_patches(cases: list[PreparedCase], keep: np.ndarray) -> HeldoutPatches:
    """The patches of every valid landmark in ``keep`` (bool (L,)) of every held-out scan."""
    subjects, landmarks, emphysema, features, lung_fraction = [], [], [], [], []
    for number, case in enumerate(cases):
        for landmark in np.flatnonzero(case.scan.valid & keep):
            centre = case.scan.landmarks[landmark]
            lung = read_crop(case.lungs, centre, PATCH_SIZE, fill=0) > 0
            if not lung.any():
                continue
            hu = read_crop(case.scan.image, centre, PATCH_SIZE)[lung].astype(np.float64)
            label = read_crop(case.labels, centre, PATCH_SIZE, fill=0)[lung] > 0
            subjects.append(number)
            landmarks.append(landmark)
            emphysema.append(label.mean())
            features.append([hu.mean(), (hu < -950).mean() * 100, (hu < -910).mean() * 100, hu.std()])
            lung_fraction.append(lung.mean())
    return HeldoutPatches(cases, np.asarray(subjects), np.asarray(landmarks), np.asarray(emphysema), np.asarray(features),
                          np.asarray(lung_fraction))


class PooledPyramid(torch.nn.Module):
    """An encoder's feature maps, each averaged over the patch, concatenated: (N, sum of channels)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        return torch.cat([level.mean(dim=(2, 3, 4)) for level in self.encoder.forward_features(x, location)], dim=1)


def embed(folder: Path, patches: HeldoutPatches, same_location: bool = False, pooled_pyramid: bool = False) -> np.ndarray:
    """The encoder output h (P, D) of every held-out patch, with its landmark's location (or,
    with ``same_location``, the atlas centre's for every patch); with ``pooled_pyramid`` the
    pooled feature pyramid (P, sum of channels) instead of h."""
    encoder, _ = load_encoder(folder)
    encoder.eval()
    if pooled_pyramid:
        encoder = PooledPyramid(encoder)
    coordinates = load_default_atlas().landmarks.normalised.astype(np.float32)
    if same_location:
        coordinates = np.zeros_like(coordinates)
    rows = []
    for number, case in enumerate(patches.cases):
        chosen = np.zeros(len(case.scan.valid), dtype=bool)
        chosen[patches.landmarks[patches.subjects == number]] = True
        rows.append(landmark_embeddings(case.scan.image, case.scan.landmarks, chosen, coordinates, encoder))
    return np.concatenate(rows)


def adjacency(landmarks: np.ndarray) -> np.ndarray:
    """bool (L, L): the same landmark or one grid step (26 voxels) away on every axis."""
    voxel = load_default_atlas().landmarks.voxel
    return np.abs(voxel[:, None, :] - voxel[None, :, :]).max(axis=2) <= STEP


def retrieval(embeddings: np.ndarray, patches: HeldoutPatches) -> tuple[float, float]:
    """Share of patches whose nearest other-subject patch (cosine) is at an adjacent / the same landmark."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    similarity = unit @ unit.T
    similarity[patches.subjects[:, None] == patches.subjects[None, :]] = -np.inf
    nearest = patches.landmarks[similarity.argmax(axis=1)]
    near = adjacency(patches.landmarks)
    return float(near[patches.landmarks, nearest].mean()), float((nearest == patches.landmarks).mean())


def chance_retrieval(patches: HeldoutPatches) -> float:
    """Expected retrieval of a random pick among the other subjects' patches."""
    near = adjacency(patches.landmarks)
    rates = []
    for subject in np.unique(patches.subjects):
        others = patches.landmarks[patches.subjects != subject]
        mine = patches.landmarks[patches.subjects == subject]
        rates.append(near[np.ix_(mine, others)].mean(axis=1))
    return float(np.concatenate(rates).mean())


def within_subject_r(predicted: np.ndarray, patches: HeldoutPatches) -> float:
    """Mean over held-out subjects of the Pearson r between a probe's out-of-fold predictions and
    the emphysema fraction of that subject's patches: does the probe rank one patient's patches,
    whatever it makes of the differences between patients."""
    rates = [np.corrcoef(predicted[patches.subjects == s], patches.emphysema[patches.subjects == s])[0, 1]
             for s in np.unique(patches.subjects)]
    return float(np.nanmean(rates))


def lung_core_r2(features: np.ndarray, patches: HeldoutPatches, core: np.ndarray) -> float | None:
    """The emphysema probe's R^2 on the patches ``core`` (bool (P,)) only; None when they come from
    fewer than 3 subjects (a subject-grouped probe needs 2 in every training fold)."""
    subjects = patches.subjects[core]
    if len(np.unique(subjects)) < 3:
        return None
    return ridge_probe(features[core], patches.emphysema[core], subject_splits(subjects), subjects).pooled["r2"]


def subject_splits(subjects: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One fold per held-out subject (at most 5): no subject is in its own probe's training set."""
    folds = min(5, len(np.unique(subjects)))
    return list(GroupKFold(folds).split(np.zeros((len(subjects), 1)), groups=subjects))


def queue_fill(run: Path) -> dict:
    """Planned fill (plan.json) and the fill reached at the end (the final checkpoint's queues)."""
    import json

    plan = json.loads((run / "plan.json").read_text())["queue_fill"]
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    reached = (final["method_state"]["queues"]["subjects"] >= 0).float().mean(dim=1)
    return {"queue_size": plan["queue_size"], "planned_mean_at_end": plan["mean_fill_at_end"],
            "reached_mean": float(reached.mean()), "planned_median_at_end": plan["median_fill_at_end"],
            "reached_median_of_landmarks_with_a_key": float(reached[reached > 0].median())}


def plot(result: dict, path: Path) -> None:
    """Three bar charts: landmark retrieval (with chance); the emphysema-fraction probe and the
    patch lung's mean-HU probe, each of the embedding h and of the pooled feature pyramid (the
    emphysema one with the HU-features baseline). With several seeds, bars are means with the
    seeds' standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spread = result.get("std_over_seeds")

    def error(family: str, *keys: str) -> list[float] | None:
        if spread is None:
            return None
        values = spread[family]
        for key in keys:
            values = values[key]
        return [values[a] for a in arms]

    arms = list(result["retrieval"])
    place = np.arange(len(arms))
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    left.bar(place, [result["retrieval"][a] for a in arms], yerr=error("retrieval"), capsize=3, color="tab:blue")
    left.axhline(result["retrieval_chance"], color="grey", linestyle="--", label="chance")
    left.set_ylabel("share of held-out patches")
    seeds = result["settings"]["seeds"]
    left.set_title("Landmark retrieval (same or adjacent)" + (f", mean of {len(seeds)} seeds" if len(seeds) > 1 else ""))
    left.legend()
    panels = ((middle, ("probe_r2",), ("pyramid_probe_r2", "emphysema"), "Probe: patch emphysema fraction"),
              (right, ("density_probe_r2", "mean_hu"), ("pyramid_probe_r2", "mean_hu"), "Probe: patch lung mean HU"))
    for axis, from_h, from_pyramid, title in panels:
        for keys, shift, colour, label in ((from_h, -0.2, "tab:orange", "embedding h"),
                                           (from_pyramid, 0.2, "tab:green", "pooled feature pyramid")):
            values = result[keys[0]]
            for key in keys[1:]:
                values = values[key]
            axis.bar(place + shift, [values[a] for a in arms], width=0.4, yerr=error(*keys), capsize=3, color=colour,
                     label=label)
        axis.set_ylabel("out-of-fold R^2")
        axis.set_title(title)
    middle.axhline(result["probe_r2"]["hu_features"], color="grey", linestyle="--", label="4 HU features")
    middle.legend(fontsize=8)
    for axis in (left, middle, right):
        axis.set_xticks(place, arms, rotation=30, ha="right")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
