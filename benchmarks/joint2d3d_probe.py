"""Linear probes of patient-level embeddings on a synthetic cohort: joint2d3d against a randomly
initialised encoder of the same architecture (baseline, same run), plus any embeddings given as
files (e.g. DrasCLR's from ``drasclr embed``), and two non-learned references: the cohort's
measured %LAA-950 (inside the true lung mask) and a 16-bin HU histogram of each scan's slice stack
(what a density-aware embedding could at least capture from the same input).

Targets come from the cohort's manifest.csv (``drasclr synth``): ``severity`` (true emphysema
percentage of the lung) and ``survival_time`` / ``event``.

* severity: ridge regression (penalty chosen inside each training fold), K-fold cross-validated
  R2 and Pearson r (mean over folds) and R2 of the pooled out-of-fold predictions;
* survival: L2-penalised Cox model (Breslow partial likelihood, penalty by inner cross-validation)
  on standardised embeddings, Harrell's C-index on each held-out fold, averaged over folds.

The probes are those of ``drasclr probe`` (:mod:`drasclr_monailabel.probe.probes`), on the same
seeded folds for every embedding.

    drasclr synth --n 40 --out cohort/ --source phantom --severity 0 40
    python benchmarks/joint2d3d_probe.py --cohort cohort/ --out benchmarks/results/joint2d3d_probe.json
    python benchmarks/joint2d3d_probe.py --cohort cohort/ --encoder runs/joint/ --extra drasclr=drasclr_embeddings.npz --out ...
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from drasclr_monailabel.probe.probes import cox_probe, make_splits, ridge_probe
from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder
from drasclr_monailabel.ssl.joint2d3d.network import encoder_from_architecture
from drasclr_monailabel.ssl.joint2d3d.sources import find_volumes
from drasclr_monailabel.ssl.joint2d3d.stacks import StackStore
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.ssl.trainer import run_pretraining
from drasclr_monailabel.utils.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]


def read_manifest(cohort: Path) -> dict[str, np.ndarray]:
    with open(cohort / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"ids": np.array([r["id"] for r in rows]), "severity": np.array([float(r["severity"]) for r in rows]),
            "laa950": np.array([float(r["laa950"]) for r in rows]), "time": np.array([float(r["survival_time"]) for r in rows]),
            "event": np.array([int(r["event"]) for r in rows])}


def volume_embeddings(embedder: JointEmbedder, cohort: Path, store: StackStore) -> np.ndarray:
    return np.stack([embedder.volume(store.get(entry))[1] for entry in find_volumes(cohort)])


def hu_histograms(cohort: Path, store: StackStore, bins: int = 16) -> np.ndarray:
    """(n, bins) fraction of stack pixels per HU bin over the lung window [-1024, 240]."""
    rows = []
    for entry in find_volumes(cohort):
        pixels = np.asarray(store.get(entry).pixels, dtype=np.float32)
        rows.append(np.histogram(pixels, bins=bins, range=(0.0, 1.0))[0] / pixels.size)
    return np.stack(rows)


def probe_all(features: np.ndarray, table: dict[str, np.ndarray], folds: int) -> dict[str, dict[str, float]]:
    severity = ridge_probe(features, table["severity"], make_splits(len(features), folds, seed=0)).summary()
    survival = cox_probe(features, table["time"], table["event"], make_splits(len(features), folds, seed=0, strata=table["event"])).summary()
    return {"severity": {"r2": severity["metrics"]["r2"]["mean"], "r2_pooled": severity["pooled"]["r2"],
                         "pearson_r": severity["metrics"]["pearson_r"]["mean"]},
            "survival": {"c_index": survival["metrics"]["c_index"]["mean"], "c_index_std": survival["metrics"]["c_index"]["std"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="synthetic cohort folder with manifest.csv")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--encoder", type=Path, help="an exported joint2d3d encoder (default: pretrain one here)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "joint2d3d_demo.yaml", help="recipe when pretraining here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=FILE.npz",
                        help="more embeddings to probe: npz with 'ids' and 'embeddings' (n, d)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()

    table = read_manifest(args.cohort)
    result: dict[str, object] = {"cohort": str(args.cohort), "n": int(len(table["ids"])), "events": int(table["event"].sum()), "folds": args.folds}
    with tempfile.TemporaryDirectory() as tmp:
        encoder_dir = args.encoder
        if encoder_dir is None:
            config = load_recipe(args.config, [f"data.stack_dir={Path(tmp) / 'stacks'}", "train.progress=false", *args.overrides])
            start = time.perf_counter()
            run_pretraining(config, args.cohort, Path(tmp) / "run")
            result["pretraining"] = {"config": str(args.config), "overrides": args.overrides, "steps": config.train.max_steps,
                                     "seconds": time.perf_counter() - start}
            encoder_dir = Path(tmp) / "run"
        trained = JointEmbedder.from_dir(encoder_dir)
        store = StackStore(Path(tmp) / "stacks", trained.settings)
        torch.manual_seed(0)
        random_encoder = encoder_from_architecture(trained.metadata["architecture"]).eval()
        random_init = JointEmbedder(random_encoder, trained.metadata, torch.device("cpu"))
        embeddings = {"joint2d3d": volume_embeddings(trained, args.cohort, store), "random_init": volume_embeddings(random_init, args.cohort, store)}
        histograms = hu_histograms(args.cohort, store)
    for spec in args.extra:
        name, path = spec.split("=", 1)
        data = np.load(path)
        index = {str(i): k for k, i in enumerate(data["ids"])}
        embeddings[name] = np.stack([data["embeddings"][index[i]] for i in table["ids"]])
    probes = {name: probe_all(features, table, args.folds) for name, features in embeddings.items()}
    probes["reference_laa950"] = probe_all(table["laa950"][:, None], table, args.folds)
    probes["reference_hu_histogram"] = probe_all(histograms, table, args.folds)
    result["probes"] = probes
    base = probes["random_init"]
    result["joint2d3d_vs_random"] = {"severity_r2_gain": probes["joint2d3d"]["severity"]["r2"] - base["severity"]["r2"],
                                     "c_index_gain": probes["joint2d3d"]["survival"]["c_index"] - base["survival"]["c_index"]}
    write_json(args.out, result)
    for name, block in probes.items():
        print(f"{name:22s} severity R2 {block['severity']['r2']:+.3f} r {block['severity']['pearson_r']:+.3f}   "
              f"survival C {block['survival']['c_index']:.3f}")


if __name__ == "__main__":
    main()
