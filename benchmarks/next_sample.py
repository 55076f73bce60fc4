"""Time of one next-sample selection with 1,000 studies in the datastore (goal: at most 1 s).

A real :class:`EmphysemaDatastore` holds ``--studies`` placeholder scans (strategies read only the
index, file fingerprints and cached scores, never the voxels), ``--labelled`` of them labelled.
Every scan has a cached 128-d embedding and a current epistemic score, as after scoring. Measured
per strategy: median and max seconds over ``--repeats`` calls with warm caches (the server's
steady state), and the first call with a cold embedding cache (a freshly started server). The
baseline, in the same run, is MONAI Label's own ``Epistemic`` strategy (rank the unlabelled scans
by a stored score, no checks); ``First`` (sort the ids) is listed for scale.

    python benchmarks/next_sample.py --out benchmarks/results/next_sample.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First

from drasclr_monailabel.tasks.datastore import EmphysemaDatastore
from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache, file_fingerprint
from drasclr_monailabel.tasks.strategies import EPISTEMIC_KEY, DiversityStrategy, EpistemicStrategy, HybridStrategy
from drasclr_monailabel.utils.atomic import write_json

GOAL_SECONDS = 1.0
MODEL_VERSION = "bench-model"


def build_datastore(folder: Path, n_studies: int, n_labelled: int, dim: int, seed: int) -> tuple[EmphysemaDatastore, Path]:
    studies = folder / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    ids = [f"study_{i:05d}" for i in range(n_studies)]
    for image_id in ids:
        (studies / f"{image_id}.nii.gz").write_bytes(image_id.encode())
    for image_id in ids[:n_labelled]:
        (studies / "labels" / "final" / f"{image_id}.nii.gz").write_bytes(b"label")
    store = EmphysemaDatastore(studies, studies / ".drasclr")
    rng = np.random.default_rng(seed)
    cache_dir = folder / "cache"
    cache = EmbeddingCache(cache_dir, "bench-encoder")
    updates = {}
    for image_id in ids:
        fingerprint = file_fingerprint(store.get_image_uri(image_id))
        cache.put(image_id, fingerprint, rng.normal(size=dim))
        score = float(rng.random())
        updates[image_id] = {EPISTEMIC_KEY: {"score": score, "model": MODEL_VERSION, "image": fingerprint},
                             "epistemic_entropy": score}
    store.update_images_info(updates)
    return store, cache_dir


def time_calls(strategy, store, name: str, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = strategy({"strategy": name}, store)
        seconds.append(time.perf_counter() - start)
        assert answer and answer.get("id"), f"{name} gave no sample"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128, help="embedding length")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store, cache_dir = build_datastore(Path(tmp), args.studies, args.labelled, args.dim, args.seed)
        build_s = time.perf_counter() - start
        version = lambda: MODEL_VERSION
        strategies = {
            "epistemic (MONAI Label, baseline)": ("epistemic", Epistemic()),
            "first (MONAI Label)": ("first", First()),
            "epistemic": ("epistemic", EpistemicStrategy(version, reserve_seconds=600)),
            "diversity": ("diversity", DiversityStrategy(EmbeddingCache(cache_dir, "bench-encoder"), reserve_seconds=600)),
            "hybrid": ("hybrid", HybridStrategy(version, EmbeddingCache(cache_dir, "bench-encoder"), reserve_seconds=600)),
        }
        results = {}
        for label, (name, strategy) in strategies.items():
            cold = time_calls(strategy, store, name, 1)[0]
            warm = time_calls(strategy, store, name, args.repeats)
            results[label] = {"cold_seconds": round(cold, 4), "median_seconds": round(statistics.median(warm), 4),
                              "max_seconds": round(max(warm), 4)}
        baseline = results["epistemic (MONAI Label, baseline)"]["median_seconds"]
        for label, row in results.items():
            row["ratio_to_baseline"] = round(row["median_seconds"] / baseline, 2) if baseline > 0 else None
            row["meets_goal"] = row["max_seconds"] <= GOAL_SECONDS
    report = {
        "benchmark": "next_sample",
        "studies": args.studies,
        "labelled": args.labelled,
        "embedding_dim": args.dim,
        "repeats": args.repeats,
        "goal_seconds": GOAL_SECONDS,
        "setup_seconds": round(build_s, 2),
        "results": results,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    write_json(args.out, report)
    for label, row in results.items():
        print(f"{label:32s} median {row['median_seconds']:.3f} s  max {row['max_seconds']:.3f} s  "
              f"cold {row['cold_seconds']:.3f} s  x{row['ratio_to_baseline']}")


if __name__ == "__main__":
    main()
