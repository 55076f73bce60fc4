"""The annotation loop itself (issue 16): test Dice and annotator effort, round by round, for every
active-learning strategy of the emphysema MONAI Label app, with and without the pretrained encoder.

The real app runs in-process (MONAI Label's FastAPI app with apps/emphysema, as the integration
tests build it) on a fresh studies folder per run; every step goes through its endpoints
(benchmarks/annotation_session.py): the strategy proposes a scan, the app pre-segments it
(round zero: ``emphysema_laa``, then its fine-tuned ``emphysema`` model), a simulated annotator
turns that into the true label (effort: voxels changed, and axial slices touched, the proxy for
edit time in Slicer), the label is saved as ``final``, the app trains one round with its own
trainer, and its inference on the held-out test scans gives Dice.

Data (fold A of benchmarks/label_efficiency.py, made by its ``make_cohorts`` with the realistic
synthetic emphysema of docs/data.md): the unlabelled pool from the real CTs lung1 and lung2, the
test scans from another patient, LIDC-IDRI-0001; the pretrained encoder is DrasCLR pretrained on
the fold's unlabelled cohort (lung1 and lung2 again, other seeds) with label_efficiency's
``pretrain`` and the size's budget, or ``--encoder``.

Sizes:
  * ``small`` (CI, about 75 s on 2 idle cores): each source CT cut to its central 120 mm axial
    slab, resampled to 192^2 voxels in-plane and shrunk to 0.8 of its size (a small chest whose
    1 mm lung grid holds few 64^3 windows; smaller ones stop registering to the atlas), 3 pool
    scans, 1 test scan; strategies random and diversity, both encoders, 1 seed, 2 rounds,
    training rounds of 1 step of 2 patches; the ``pretrained`` encoder is a narrow one with
    random weights (the slabs hold too few landmarks to pretrain on), or ``--encoder``. It
    checks the mechanics; it measures nothing about strategies.
  * ``full``: 16 pool scans, 3 test scans, the five strategies x {pretrained, scratch} x 3 seeds x
    8 rounds, the app's default training round (4 epochs x 25 steps of 4 patches), a 4,000-step
    pretraining. Measured on this project's 2-core CPU (docs/benchmarks.md, the whole grid): a run
    of 8 rounds takes 9-11 minutes with ``random``, ``first`` and ``diversity`` and 14-16 minutes
    with ``epistemic`` and ``hybrid`` (their scoring of the pool, about 40 s a round), the
    pretraining 27 minutes: the whole grid (24 runs; diversity and hybrid need the encoder) took
    4.7 hours of that CPU.

Strategies diversity and hybrid exist in the app only with a pretrained encoder: without one they
are recorded as skipped. The seed is the app's ``--conf seed``: it seeds training and the random
strategy's picks, so a rerun repeats a session.

Output (``--out``, written atomically): ``strategies`` -> ``"<strategy>/<encoder>"`` -> per-round
lists (index r = after r + 1 labelled scans) averaged over seeds: ``dice`` (mean test Dice),
``dice_std``, ``effort_voxels``, ``effort_slices``, ``seconds`` ({"select", "presegment",
"train", "score"}: wall seconds per round), and ``seeds`` -> each seed's full record (picks,
pre-segmenting model, labelled count, the strategy's answers); or ``{"skipped": reason}``.
``baseline_laa_only``: the effort of correcting ``emphysema_laa``'s pre-segmentation of the same
scans (``strategies`` as above, ``per_scan`` for every pool scan) and its test Dice. ``goals``:
issue 16's two goals read off the runs (benchmarks/annotation_goals.py). Finished
runs are kept in ``<workdir>/runs`` and reused by a rerun with the same settings (these hold every app
and training option with its default filled in, so a changed default makes old runs stale).

Usage:
  python benchmarks/annotation_loop.py --size small --out /tmp/loop.json --plots /tmp/loop_plots
  python benchmarks/annotation_loop.py --size full --out benchmarks/results/annotation_loop.json --plots docs/images
  # part of the full grid (finished runs are reused, so the grid can be gathered over several invocations):
  python benchmarks/annotation_loop.py --size full --strategies random hybrid --encoders pretrained --seeds 0 \
      --workdir ~/.cache/drasclr-benchmarks/annotation_loop_full --out /tmp/loop_part.json
  # another training round budget (the app's --conf), in runs of its own:
  python benchmarks/annotation_loop.py --size full --strategies random --encoders pretrained --seeds 0 \
      --app-conf max_epochs=16 --workdir ~/.cache/drasclr-benchmarks/annotation_loop_full --out /tmp/loop_16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotation_goals import goals  # noqa: E402
from annotation_session import NEED_ENCODER, laa_effort, held_out_dice, run_session  # noqa: E402

from drasclr_monailabel.nnunet.sources import SourceCase, cases_from_manifest  # noqa: E402
from drasclr_monailabel.tasks.in_process import in_process_app  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json, write_with  # noqa: E402

STRATEGIES = ("random", "first", "epistemic", "diversity", "hybrid")
ENCODERS = ("pretrained", "scratch")
FOLD = "A"
SLAB_MM, SLAB_PIXELS, SLAB_SCALE = 120.0, 192, 0.8
"""CI sources: axial slab thickness (mm), in-plane voxels, and the factor on voxel size and origin."""


@dataclass(frozen=True)
class LoopSize:
    """One benchmark size.

    Attributes:
        cohort: changes to label_efficiency's size of the same name (its cohorts and pretraining):
            ``train_scans`` is the pool, ``test_scans`` the held-out scans, ``unlabelled_scans``
            the pretraining cohort.
        strategies, encoders, seeds, rounds: the grid.
        app_conf: ``--conf`` options of the app (empty: its defaults, e.g. the training round).
        ci_sources: shrink the source CTs to small slabs (:func:`ci_sources`).
        random_encoder: an architecture (``EncoderArchitecture`` arguments) exported with random
            weights as the ``pretrained`` arm's encoder instead of pretraining one: the CI size's
            slabs hold too few valid landmarks to pretrain on.
    """

    cohort: dict[str, int]
    strategies: tuple[str, ...]
    encoders: tuple[str, ...]
    seeds: tuple[int, ...]
    rounds: int
    app_conf: dict[str, str] = field(default_factory=dict)
    ci_sources: bool = False
    random_encoder: dict[str, Any] | None = None


SIZES = {
    "small": LoopSize(cohort={"train_scans": 3, "test_scans": 1, "unlabelled_scans": 2},
                      strategies=("random", "diversity"), encoders=ENCODERS, seeds=(0,), rounds=2,
                      app_conf={"max_epochs": "1", "steps_per_epoch": "1", "batch_size": "2", "embedding_landmarks": "16"},
                      ci_sources=True, random_encoder={"stem_channels": 4, "block_channels": (8, 8, 16), "top_channels": 16,
                                                       "embedding_dim": 16, "num_experts": 2}),
    "full": LoopSize(cohort={"train_scans": 16, "test_scans": 3, "unlabelled_scans": 16},
                     strategies=STRATEGIES, encoders=ENCODERS, seeds=(0, 1, 2), rounds=8),
}


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="annotation_loop.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="benchmark size (default small)")
    parser.add_argument("--plots", type=Path, help="folder for the two PNG plots (created)")
    parser.add_argument("--workdir", type=Path, help="folder for cohorts, encoder and runs (default: beside --out)")
    parser.add_argument("--encoder", type=Path, help="exported encoder for the pretrained runs instead of pretraining one "
                                                     "(its pretraining data must not include the test patient)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="run only these strategies of the size's grid")
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, help="run only these encoder arms of the size's grid")
    parser.add_argument("--seeds", nargs="+", type=int, help="run these seeds instead of the size's")
    parser.add_argument("--app-conf", nargs="+", default=[], metavar="KEY=VALUE",
                        help="app --conf options over the size's (e.g. max_epochs=16); their runs are kept apart")
    args = parser.parse_args(argv)
    if any("=" not in option for option in args.app_conf):
        parser.error(f"--app-conf {' '.join(args.app_conf)}: give each option as KEY=VALUE")
    args.app_conf = dict(option.split("=", 1) for option in args.app_conf)
    fixed = sorted(set(args.app_conf) & set(BENCHMARK_CONF))
    if fixed:
        parser.error(f"--app-conf {', '.join(fixed)}: set by the benchmark itself (the encoder: --encoder; seeds: --seeds)")
    if args.encoder is not None and not (args.encoder / "encoder.json").is_file():
        parser.error(f"--encoder {args.encoder}: no encoder.json there (give a folder made by 'drasclr export')")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give a JSON file name")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    base = SIZES[args.size]
    size = replace(base, strategies=tuple(args.strategies or base.strategies), encoders=tuple(args.encoders or base.encoders),
                   seeds=tuple(base.seeds if args.seeds is None else args.seeds), app_conf={**base.app_conf, **args.app_conf})
    workdir = args.workdir or args.out.with_name(args.out.stem + "_work")
    started = time.perf_counter()
    cohorts = make_data(args.size, workdir)
    pool = {case.image_id: case for case in cases_from_manifest(cohorts["train"] / "manifest.csv")}
    tests = cases_from_manifest(cohorts["test"] / "manifest.csv")
    print(f"pool: {len(pool)} scans; test: {len(tests)} scans of the held-out patient; work folder {workdir}", flush=True)
    encoder = args.encoder
    if encoder is None and "pretrained" in size.encoders:
        encoder = default_encoder(args.size, cohorts["unlabelled"], workdir)
    baseline = laa_baseline(pool, tests, workdir / "baseline", size.app_conf)
    print(f"emphysema_laa alone: test Dice {baseline['test_dice']:.3f}", flush=True)

    runs: dict[str, Any] = {}
    for strategy in size.strategies:
        for arm in size.encoders:
            name = f"{strategy}/{arm}"
            if arm == "scratch" and strategy in NEED_ENCODER:
                runs[name] = {"skipped": f"the app offers '{strategy}' only with a pretrained encoder"}
                print(f"{name}: skipped ({runs[name]['skipped']})", flush=True)
                continue
            runs[name] = {str(seed): run(size, args.size, strategy, arm, seed, encoder if arm == "pretrained" else None, pool,
                                         tests, workdir) for seed in size.seeds}
    result = summarise(runs, baseline)
    result["goals"] = goals(result)
    print_goals(result["goals"])
    result["command"] = " ".join(["python", "benchmarks/annotation_loop.py", *(argv if argv is not None else sys.argv[1:])])
    result["settings"] = {"size": args.size, **asdict(size), "fold": FOLD, "encoder": str(encoder) if encoder else None,
                          "pool": sorted(pool), "test": [case.image_id for case in tests]}
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                         "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    if args.plots is not None:
        from annotation_plots import plot_all

        for path in plot_all(result, args.plots):
            print(f"wrote {path}", flush=True)
    print(f"wrote {args.out} ({result['seconds']:.0f} s)", flush=True)
    return 0


def print_goals(reading: dict[str, Any]) -> None:
    """One line per run (effort ratio against ``emphysema_laa``, scans to random's last Dice), then the goals."""
    for name, ratio in reading["effort_ratio"].items():
        scans = reading["scans_to_random_last_dice"][name]
        print(f"{name}: corrected voxels {ratio['mean']:.2f}x emphysema_laa's on the same scans; random's last Dice "
              f"{'never reached' if scans is None else f'reached after {scans} scans'}", flush=True)
    if reading["best_pretrained"] is not None:
        print(f"best pretrained run {reading['best_pretrained']}: goal 1 (<= 0.5x) "
              f"{'met' if reading['goal1_met'] else 'missed'}, goal 2 (random's last Dice with <= 5 scans) "
              f"{'met' if reading['goal2_met'] else 'missed'}", flush=True)


def cohort_size(name: str) -> Any:
    """label_efficiency's ``Size`` of the same name with this size's cohort changes."""
    from label_efficiency import SIZES as COHORT_SIZES

    return replace(COHORT_SIZES[name], **SIZES[name].cohort)


def default_encoder(name: str, unlabelled: Path, workdir: Path) -> Path:
    """The size's encoder for the ``pretrained`` arm: DrasCLR pretrained on ``unlabelled`` with the
    size's budget (label_efficiency's ``pretrain``), or the size's random architecture."""
    size = SIZES[name]
    if size.random_encoder is not None:
        from drasclr_monailabel.models.encoder import EncoderArchitecture
        from drasclr_monailabel.models.export import save_random_encoder

        print("encoder: random weights, narrow architecture (CI size: no pretraining)", flush=True)
        return save_random_encoder(workdir / "encoder_random", EncoderArchitecture(**size.random_encoder), seed=0,
                                   note="random weights: the annotation loop's CI size does not pretrain")
    from label_efficiency import pretrain

    print("encoder: DrasCLR on the fold's unlabelled cohort (pretrained now unless already exported in the work folder)",
          flush=True)
    return pretrain(cohort_size(name), unlabelled, workdir / "pretrain_pretrained")


def make_data(name: str, workdir: Path) -> dict[str, Path]:
    """Fold A's cohorts (``train`` = the pool, ``test``, ``unlabelled``) made by label_efficiency's
    ``make_cohorts``, from :func:`ci_sources` at the CI size."""
    from label_efficiency import make_cohorts

    sources = ci_sources(workdir / "sources") if SIZES[name].ci_sources else None
    return make_cohorts(cohort_size(name), workdir / f"fold_{FOLD}", FOLD, sources=sources)


def ci_sources(folder: Path) -> dict[str, list[Path]]:
    """Fold A's real source CTs made small for CI: each one's central axial slab of ``SLAB_MM``,
    resampled to ``SLAB_PIXELS``^2 in-plane (smoothed first), voxel size and origin scaled by
    ``SLAB_SCALE`` (a small chest: its 1 mm lung grid has a few 64^3 windows). Returns
    ``make_cohorts``' ``sources``."""
    from label_efficiency import FOLD_SOURCES

    from drasclr_monailabel.data.sample_data import fetch_sample_data

    names = FOLD_SOURCES[FOLD]
    samples = fetch_sample_data([*names["pool"], names["test"]])
    paths = {}
    for name, path in samples.items():
        paths[name] = folder / f"{name}.nii.gz"
        if not paths[name].is_file():
            small = shrunk_slab(sitk.ReadImage(str(path)))
            write_with(paths[name], lambda tmp, image=small: sitk.WriteImage(image, str(tmp), True))
    pool = [paths[name] for name in names["pool"]]
    return {"train": pool, "test": [paths[names["test"]]], "unlabelled": pool}


def shrunk_slab(image: sitk.Image) -> sitk.Image:
    """The central ``SLAB_MM`` axial slab of ``image`` on ``SLAB_PIXELS``^2 in-plane voxels, scaled by ``SLAB_SCALE``."""
    slices = min(image.GetSize()[2], max(1, round(SLAB_MM / image.GetSpacing()[2])))
    first = (image.GetSize()[2] - slices) // 2
    slab = image[:, :, first:first + slices]
    spacing = [slab.GetSpacing()[i] * slab.GetSize()[i] / SLAB_PIXELS for i in range(2)] + [slab.GetSpacing()[2]]
    reference = sitk.Image([SLAB_PIXELS, SLAB_PIXELS, slices], slab.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetOrigin(slab.GetOrigin())
    reference.SetDirection(slab.GetDirection())
    smooth = sitk.SmoothingRecursiveGaussian(slab, [spacing[0] / 2, spacing[1] / 2, 0.01])
    small = sitk.Resample(smooth, reference, sitk.Transform(), sitk.sitkLinear, -1024.0)
    small.SetSpacing([s * SLAB_SCALE for s in small.GetSpacing()])
    small.SetOrigin([o * SLAB_SCALE for o in small.GetOrigin()])
    return small


def studies_folder(pool: dict[str, SourceCase], folder: Path) -> Path:
    """A fresh studies folder holding the pool's scans (hard links, or copies keeping the modification
    time, so the app's per-scan embedding cache, keyed by size and time, is shared between runs)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for image_id, case in pool.items():
        target = folder / f"{image_id}.nii.gz"
        try:
            os.link(case.image, target)
        except OSError:
            shutil.copy2(case.image, target)
    return folder


BENCHMARK_CONF = ("pretrained", "seed", "auto_update_scoring", "cache_dir")
"""App options that :func:`app_conf` sets for every run (``--app-conf`` refuses them)."""


def app_conf(size: LoopSize, encoder: Path | None, seed: int, workdir: Path) -> dict[str, str]:
    """The app's ``--conf``: the size's options, the encoder (or none), the training seed, a shared
    embedding cache, and no background scoring (the session runs the scoring a strategy needs)."""
    return {**size.app_conf, "pretrained": str(encoder) if encoder else "none", "seed": str(seed),
            "auto_update_scoring": "false", "cache_dir": str(workdir / "embedding_cache")}


def app_options(conf: dict[str, str]) -> dict[str, Any]:
    """Every option the app runs with under ``conf``, its defaults filled in: ``app`` (:class:`AppConf`
    less the training options) and ``training`` (the round's :class:`FinetuneConfig`, less device and
    mixed precision: the app's own ``device`` and ``amp`` set those). Part of a run's settings, so a
    changed app or trainer default makes old runs stale instead of reading them back as runs under
    the new default. Machine-dependent values (``device auto``, the overlap it implies) stay unresolved."""
    from drasclr_monailabel.segmentation.training import FinetuneConfig
    from drasclr_monailabel.tasks.conf import TRAINING_KEYS, parse_app_conf, training_overrides

    parsed = parse_app_conf(conf)
    app = {key: value for key, value in asdict(parsed).items() if key not in TRAINING_KEYS}
    training = {key: value for key, value in asdict(FinetuneConfig(**training_overrides(parsed))).items()
                if key not in ("device", "amp")}
    return json.loads(json.dumps({"app": app, "training": training}, default=str))


def laa_baseline(pool: dict[str, SourceCase], tests: list[SourceCase], folder: Path, conf: dict[str, str]) -> dict[str, Any]:
    """``per_scan``: effort of correcting the app's ``emphysema_laa`` output of every pool scan;
    ``test_dice``: its Dice on the test scans (the round-zero model's)."""
    studies = studies_folder(pool, folder / "studies")
    with in_process_app(studies, {**conf, "pretrained": "none", "models": "lung,emphysema_laa"}) as client:
        per_scan = {image: {"voxels": e.voxels, "slices": e.slices} for image, e in laa_effort(client, pool).items()}
        return {"per_scan": per_scan, "test_dice": held_out_dice(client, "emphysema_laa", tests)}


def run(size: LoopSize, size_name: str, strategy: str, arm: str, seed: int, encoder: Path | None,
        pool: dict[str, SourceCase], tests: list[SourceCase], workdir: Path) -> dict[str, Any]:
    """One session (strategy, encoder arm, seed) on a fresh studies folder; a finished one with the same
    settings (the size's, the run's, and every app option with its default: :func:`app_options`) is
    read back from ``<workdir>/runs`` instead, whichever part of the grid the invocation that made it
    ran (the grid is not part of a run's settings; the folder: :func:`run_folder`)."""
    folder = run_folder(size, size_name, strategy, arm, seed, workdir)
    conf = app_conf(size, encoder, seed, workdir)
    session = {key: value for key, value in asdict(size).items() if key not in ("strategies", "encoders", "seeds")}
    settings = json.loads(json.dumps({"size": size_name, **session, "strategy": strategy, "arm": arm, "seed": seed,
                                      "encoder": str(encoder), "pool": sorted(pool), "app_options": app_options(conf)}))
    done = finished_run_file(folder)
    kept = finished_record(done, settings, f"{strategy}/{arm} seed {seed}")
    if kept is not None:
        return kept
    print(f"{strategy}/{arm} seed {seed}: {size.rounds} rounds", flush=True)
    studies = studies_folder(pool, folder / "studies")
    with in_process_app(studies, conf) as client:
        record = run_session(client, strategy, pool, tests, size.rounds)
    write_json(done, {"settings": settings, "record": record})
    return record


def finished_record(done: Path, settings: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The record of the finished run in ``done`` when it was made with ``settings``, else None (after
    one line naming the settings that changed, when there is a finished run)."""
    if not done.is_file():
        return None
    kept = json.loads(done.read_text())
    old = kept.get("settings", {})
    if old == settings:
        print(f"{name}: already done", flush=True)
        return kept["record"]
    changed = sorted(key for key in {*old, *settings} - {"app_options"} if old.get(key) != settings.get(key))
    if "app_options" not in old:
        changed.append("app_options (not recorded)")
    else:
        changed += sorted(f"{part}.{key}" for part, options in settings["app_options"].items() for key, value in options.items()
                          if old["app_options"].get(part, {}).get(key) != value)
    print(f"{name}: the finished run in {done} was made with other settings ({', '.join(changed)}); running it again",
          flush=True)
    return None


def run_folder(size: LoopSize, size_name: str, strategy: str, arm: str, seed: int, workdir: Path) -> Path:
    """``<workdir>/runs/<strategy>_<arm>_<seed>``, followed by ``_<key>-<value>`` for each app option
    that differs from the size's, so runs under other options never overwrite the size's own."""
    changed = sorted((key, value) for key, value in size.app_conf.items() if SIZES[size_name].app_conf.get(key) != value)
    return workdir / "runs" / "_".join([strategy, arm, str(seed),
                                        *(f"{key}-{value}".replace(os.sep, "-") for key, value in changed)])


def finished_run_file(folder: Path) -> Path:
    """``<folder>.json``, a finished run's settings and record (not ``with_suffix``: a folder named
    after an option's value, such as ``emphysema_threshold-0.5``, has a dot in its name)."""
    return folder.parent / f"{folder.name}.json"


def summarise(runs: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The JSON's ``strategies`` (per-round means over seeds, each seed's record under ``seeds``) and
    ``baseline_laa_only`` (the LAA correction effort of the scans each run picked)."""
    strategies: dict[str, Any] = {}
    laa: dict[str, Any] = {}
    for name, seeds in runs.items():
        if "skipped" in seeds:
            strategies[name] = seeds
            continue
        records = list(seeds.values())

        def mean(values: list[list[float]]) -> list[float]:
            return [round(float(v), 4) for v in np.mean(values, axis=0)]

        dice = [r["dice"] for r in records]
        strategies[name] = {"dice": mean(dice), "dice_std": [round(float(v), 4) for v in np.std(dice, axis=0)],
                            "effort_voxels": mean([r["effort_voxels"] for r in records]),
                            "effort_slices": mean([r["effort_slices"] for r in records]),
                            "seconds": {key: mean([r["seconds"][key] for r in records]) for key in records[0]["seconds"]},
                            "seeds": seeds}
        picked = [[baseline["per_scan"][image] for image in r["picks"]] for r in records]
        laa[name] = {"effort_voxels": mean([[p["voxels"] for p in run] for run in picked]),
                     "effort_slices": mean([[p["slices"] for p in run] for run in picked])}
        print(f"{name}: test Dice by round {strategies[name]['dice']}; corrected voxels {strategies[name]['effort_voxels']} "
              f"(emphysema_laa alone: {laa[name]['effort_voxels']})", flush=True)
    return {"strategies": strategies,
            "baseline_laa_only": {"strategies": laa, "per_scan": baseline["per_scan"], "test_dice": baseline["test_dice"]}}


if __name__ == "__main__":
    sys.exit(main())
