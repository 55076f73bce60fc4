"""Which embedding carries the phenotype? Linear probes of patient-level embeddings on a synthetic
cohort: DrasCLR and joint2d3d (each pretrained here or given), each against a randomly initialised
copy of its own architecture (the baseline measured in the same run), and two non-learned
references: a 16-bin HU histogram of the lung (from the preprocessing cache's lung mask) and the
manifest's measured %LAA-950.

Every representation is probed with ``drasclr probe``'s code (:func:`probe_target`) on the same
seeded folds: ``severity`` (true emphysema percentage; ridge, R^2 and Pearson r) and survival
(``survival_time`` / ``event``; L2 Cox, Harrell's C-index). The JSON records settings, timings,
per-fold metrics, and each pretrained embedding's gain over its random-init baseline; the PNG
shows severity R^2 and C-index per representation (mean and standard deviation over the folds).

    drasclr synth --n 40 --source phantom --severity 0 40 --phantom-spacing 2.5 2.5 2.5 --out cohort/
    python benchmarks/probe_comparison.py --cohort cohort/ --work /tmp/probe-work \\
        --out benchmarks/results/probe_comparison_cpu.json

``--cache``, ``--drasclr-encoder`` and ``--joint-encoder`` reuse what exists; otherwise the cohort
is preprocessed and both methods are pretrained in ``--work`` with the demo recipes (override
with ``--drasclr-set`` / ``--joint-set KEY=VALUE``). Steps already done in ``--work`` are reused.
"""

from __future__ import annotations

import argparse
import csv
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.embed.cohort import (
    EmbedSettings,
    cache_inputs,
    embed_cohort,
    scan_inputs,
)
from drasclr_monailabel.embed.store import load_embeddings
from drasclr_monailabel.probe.run import probe_target
from drasclr_monailabel.ssl.cache import complete_scans
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.utils.atomic import write_json, write_with

ROOT = Path(__file__).resolve().parents[1]
HU_BINS = 16
HU_RANGE = (-1024.0, 0.0)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drasclr_steps import check_reuse  # noqa: E402


def read_manifest(cohort: Path) -> dict[str, np.ndarray]:
    """ids, severity (%), laa950 (%), survival time (months) and event (0/1) of a synthetic cohort."""
    with open(cohort / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"ids": np.array([r["id"] for r in rows]), "severity": np.array([float(r["severity"]) for r in rows]),
            "laa950": np.array([float(r["laa950"]) for r in rows]), "time": np.array([float(r["survival_time"]) for r in rows]),
            "event": np.array([int(r["event"]) for r in rows])}


def lung_histograms(cache: Path, ids: np.ndarray) -> np.ndarray:
    """(n, HU_BINS) fraction of each scan's lung voxels per HU bin over HU_RANGE (cache image and lung mask)."""
    rows = []
    for scan_id in ids:
        image = np.load(cache / scan_id / f"{scan_id}_image.npy", mmap_mode="r")
        lung = np.load(cache / scan_id / f"{scan_id}_lung.npy", mmap_mode="r") > 0
        values = np.asarray(image)[lung]
        rows.append(np.histogram(values, bins=HU_BINS, range=HU_RANGE)[0] / max(values.size, 1))
    return np.stack(rows)


def pretrain(name: str, config: Path, data: Path, run_dir: Path, overrides: list[str]) -> tuple[Path, float]:
    """Run ``drasclr pretrain`` unless ``run_dir`` already holds an exported encoder of the same
    recipe; returns it and the seconds taken."""
    if (run_dir / "encoder.json").is_file():
        check_reuse(__file__, run_dir, load_recipe(config, ["train.progress=false", *overrides]))
        return run_dir, 0.0
    start = time.perf_counter()
    arguments = ["pretrain", "--config", str(config), "--cache", str(data), "--out", str(run_dir), "--set", "train.progress=false"]
    for override in overrides:
        arguments += ["--set", override]
    if drasclr(arguments) != 0:
        sys.exit(f"{name} pretraining failed")
    return run_dir, time.perf_counter() - start


def embed(encoder: Path, inputs: list, out: Path, settings: EmbedSettings) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    report = embed_cohort(encoder, inputs, out, settings)
    if report.failures:
        sys.exit(f"embedding into {out} failed for {[f['id'] for f in report.failures]}")
    ids, features, _ = load_embeddings(out)
    return ids, features, time.perf_counter() - start


def probe_all(features: np.ndarray, table: dict[str, np.ndarray], folds: int, seed: int) -> dict[str, Any]:
    """Severity (ridge) and survival (Cox) probes on the same seeded folds as every other representation."""
    severity, _ = probe_target(features, table["severity"], "regression", folds, seed, "severity")
    survival, _ = probe_target(features, table["event"].astype(float), "survival", folds, seed, "event", table["time"])
    return {"severity": severity.summary(), "survival": survival.summary()}


def headline(block: dict[str, Any]) -> dict[str, float]:
    """The numbers compared: severity R^2 (fold mean and pooled), Pearson r, C-index (fold mean and pooled)."""
    severity, survival = block["severity"], block["survival"]
    return {"severity_r2": severity["metrics"]["r2"]["mean"], "severity_r2_std": severity["metrics"]["r2"]["std"],
            "severity_r2_pooled": severity["pooled"]["r2"], "severity_pearson_r": severity["metrics"]["pearson_r"]["mean"],
            "c_index": survival["metrics"]["c_index"]["mean"], "c_index_std": survival["metrics"]["c_index"]["std"],
            "c_index_pooled": survival["pooled"]["c_index"]}


def plot(path: Path, summary: dict[str, dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(summary)
    figure = Figure(figsize=(9, 4), dpi=100)
    left, right = figure.subplots(1, 2)
    positions = np.arange(len(names))
    for ax, key, label in ((left, "severity_r2", "severity R² (ridge)"), (right, "c_index", "survival C-index (Cox)")):
        ax.bar(positions, [summary[n][key] for n in names], yerr=[summary[n][f"{key}_std"] for n in names], capsize=3,
               color=["tab:blue" if "random" not in n and "reference" not in n else "tab:grey" if "random" in n else "tab:green"
                      for n in names])
        ax.set_xticks(positions, names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{label}, mean ± std over folds", fontsize=8)
        ax.axhline(0.5 if key == "c_index" else 0.0, color="black", linewidth=0.8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="synthetic cohort folder (drasclr synth) with manifest.csv")
    parser.add_argument("--out", type=Path, required=True, help="result JSON (the PNG is written beside it)")
    parser.add_argument("--work", type=Path, required=True, help="work folder: cache, pretraining runs, embeddings (reused)")
    parser.add_argument("--cache", type=Path, help="the cohort's preprocessing cache (default: preprocess into --work)")
    parser.add_argument("--drasclr-encoder", type=Path, help="exported DrasCLR encoder (default: pretrain one in --work)")
    parser.add_argument("--joint-encoder", type=Path, help="exported joint2d3d encoder (default: pretrain one in --work)")
    parser.add_argument("--drasclr-config", type=Path, default=ROOT / "configs" / "drasclr_demo.yaml")
    parser.add_argument("--joint-config", type=Path, default=ROOT / "configs" / "joint2d3d_demo.yaml")
    parser.add_argument("--drasclr-set", action="append", default=[], metavar="KEY=VALUE", help="DrasCLR recipe override")
    parser.add_argument("--joint-set", action="append", default=[], metavar="KEY=VALUE", help="joint2d3d recipe override")
    parser.add_argument("--max-landmarks", type=int, default=0, help="DrasCLR landmarks per scan (0 = all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="fold seed (and random-init seed)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    table = read_manifest(args.cohort)
    work = args.work
    cache = args.cache or work / "cache"
    timings: dict[str, float] = {}
    if args.cache is None and not (cache / "summary.json").is_file():
        start = time.perf_counter()
        if drasclr(["preprocess", str(args.cohort / "manifest.csv"), "--out", str(cache), "--no-progress"]) != 0:
            sys.exit("preprocessing failed")
        timings["preprocess_s"] = time.perf_counter() - start
    if sorted(p.parent.name for p in complete_scans(cache)) != sorted(table["ids"].tolist()):
        sys.exit(f"{cache} does not hold exactly the scans of {args.cohort / 'manifest.csv'}")

    drasclr_encoder, timings["drasclr_pretrain_s"] = (args.drasclr_encoder, 0.0) if args.drasclr_encoder else \
        pretrain("DrasCLR", args.drasclr_config, cache, work / "drasclr_run", ["train.device=cpu", *args.drasclr_set])
    joint_encoder, timings["joint2d3d_pretrain_s"] = (args.joint_encoder, 0.0) if args.joint_encoder else \
        pretrain("joint2d3d", args.joint_config, args.cohort / "manifest.csv", work / "joint_run",
                 [f"data.stack_dir={work / 'stacks'}", "train.device=cpu", *args.joint_set])

    drasclr_settings = EmbedSettings(device="cpu", max_landmarks=args.max_landmarks, progress=False)
    joint_settings = EmbedSettings(device="cpu", progress=False)
    cached, scans = cache_inputs(cache), scan_inputs([args.cohort / "manifest.csv"])
    runs = {
        "drasclr": (drasclr_encoder, cached, drasclr_settings),
        "drasclr_random_init": (drasclr_encoder, cached, EmbedSettings(**{**vars(drasclr_settings), "random_init": args.seed})),
        "joint2d3d": (joint_encoder, scans, joint_settings),
        "joint2d3d_random_init": (joint_encoder, scans, EmbedSettings(**{**vars(joint_settings), "random_init": args.seed})),
    }
    features: dict[str, np.ndarray] = {}
    for name, (encoder, inputs, settings) in runs.items():
        ids, values, timings[f"{name}_embed_s"] = embed(encoder, inputs, work / f"emb_{name}", settings)
        order = {scan_id: k for k, scan_id in enumerate(ids)}
        features[name] = values[[order[scan_id] for scan_id in table["ids"]]]
    features["reference_hu_histogram"] = lung_histograms(cache, table["ids"])
    features["reference_laa950"] = table["laa950"][:, None]

    probes = {name: probe_all(values, table, args.folds, args.seed) for name, values in features.items()}
    summary = {name: headline(block) for name, block in probes.items()}
    gains = {method: {"severity_r2_gain": summary[method]["severity_r2"] - summary[f"{method}_random_init"]["severity_r2"],
                      "c_index_gain": summary[method]["c_index"] - summary[f"{method}_random_init"]["c_index"]}
             for method in ("drasclr", "joint2d3d")}
    result = {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cohort": {"path": str(args.cohort), "n": len(table["ids"]), "events": int(table["event"].sum()),
                   "severity_range": [float(table["severity"].min()), float(table["severity"].max())]},
        "settings": {"folds": args.folds, "seed": args.seed, "max_landmarks": args.max_landmarks,
                     "drasclr": {"encoder": str(drasclr_encoder), "config": str(args.drasclr_config), "overrides": args.drasclr_set},
                     "joint2d3d": {"encoder": str(joint_encoder), "config": str(args.joint_config), "overrides": args.joint_set},
                     "hu_histogram": {"bins": HU_BINS, "range_hu": list(HU_RANGE)}},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "timings_s": timings,
        "summary": summary,
        "gain_over_random_init": gains,
        "probes": probes,
    }
    write_json(args.out, result)
    plot(args.out.with_suffix(".png"), summary, f"{len(table['ids'])} synthetic scans, {args.folds}-fold CV (seed {args.seed})")
    for name, row in summary.items():
        print(f"{name:24s} severity R2 {row['severity_r2']:+.3f} ± {row['severity_r2_std']:.3f} (pooled {row['severity_r2_pooled']:+.3f})   "
              f"C-index {row['c_index']:.3f} ± {row['c_index_std']:.3f}")


if __name__ == "__main__":
    main()
