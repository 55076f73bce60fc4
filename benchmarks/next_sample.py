"""Time of one next-sample selection with 1,000 studies in the datastore (goal: at most 1 s).

A studies folder holds ``--studies`` placeholder scans (strategies read only the datastore index,
file fingerprints and cached scores, never the voxels), ``--labelled`` of them labelled. Every
scan has a cached embedding and a current epistemic score, as after the scoring methods ran.

Two levels are timed, each as the first call (cold caches: a freshly started server) and the
median and max of ``--repeats`` further calls:

- strategy: the strategy object on the datastore (what ranking costs);
- endpoint: ``POST /activelearning/<strategy>`` on the emphysema app in-process (FastAPI
  TestClient), which adds MONAI Label's request handling: app info, the image info merge and the
  index write that records who got the scan.

The baseline, in the same run, is MONAI Label's own ``Epistemic`` strategy (rank the unlabelled
scans by a stored score) on the same datastore; ``First`` (sort the ids) is listed for scale.

    python benchmarks/next_sample.py --out benchmarks/results/next_sample.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First

from drasclr_monailabel.packaged import APP_DIR
from drasclr_monailabel.tasks.datastore import EmphysemaDatastore
from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache
from drasclr_monailabel.tasks.strategies import EPISTEMIC_KEY, DiversityStrategy, EpistemicStrategy, HybridStrategy
from drasclr_monailabel.utils.atomic import write_json
from drasclr_monailabel.utils.fingerprint import file_fingerprint

GOAL_SECONDS = 1.0
APP_STRATEGIES = ("epistemic", "diversity", "hybrid")


def build_studies(folder: Path, n_studies: int, n_labelled: int) -> Path:
    studies = folder / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    ids = [f"study_{i:05d}" for i in range(n_studies)]
    for image_id in ids:
        (studies / f"{image_id}.nii.gz").write_bytes(image_id.encode())
    for image_id in ids[:n_labelled]:
        (studies / "labels" / "final" / f"{image_id}.nii.gz").write_bytes(b"label")
    return studies


def plant_scores(store: EmphysemaDatastore, cache: EmbeddingCache, model_version: str, dim: int, seed: int) -> None:
    """An embedding and a current epistemic score for every scan (what the scoring methods store)."""
    rng = np.random.default_rng(seed)
    updates = {}
    for image_id in store.list_images():
        fingerprint = file_fingerprint(store.get_image_uri(image_id))
        cache.put(image_id, fingerprint, rng.normal(size=dim))
        score = float(rng.random())
        updates[image_id] = {EPISTEMIC_KEY: {"score": score, "model": model_version, "image": fingerprint},
                             "epistemic_entropy": score}
    store.update_images_info(updates)


def timed(call, repeats: int) -> dict[str, float]:
    def once() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    cold = once()
    warm = [once() for _ in range(repeats)]
    return {"cold_seconds": round(cold, 4), "median_seconds": round(statistics.median(warm), 4), "max_seconds": round(max(warm), 4)}


def strategy_level(studies: Path, repeats: int, dim: int, seed: int) -> dict[str, dict[str, float]]:
    store = EmphysemaDatastore(studies, studies / ".drasclr")
    cache_dir = studies.parent / "strategy-cache"
    plant_scores(store, EmbeddingCache(cache_dir, "bench-encoder"), "bench-model", dim, seed)
    version = lambda: "bench-model"
    strategies = {
        "epistemic (MONAI Label, baseline)": ("epistemic", Epistemic()),
        "first (MONAI Label)": ("first", First()),
        "epistemic": ("epistemic", EpistemicStrategy(version, reserve_seconds=600)),
        "diversity": ("diversity", DiversityStrategy(EmbeddingCache(cache_dir, "bench-encoder"), reserve_seconds=600)),
        "hybrid": ("hybrid", HybridStrategy(version, EmbeddingCache(cache_dir, "bench-encoder"), reserve_seconds=600)),
    }

    def ask(name: str, strategy) -> None:
        answer = strategy({"strategy": name}, store)
        assert answer and answer.get("id"), f"{name} gave no sample"

    return {label: timed(lambda n=name, s=strategy: ask(n, s), repeats) for label, (name, strategy) in strategies.items()}


def endpoint_level(studies: Path, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """The real app in-process with a small exported encoder and a published model file."""
    import torch
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
    from drasclr_monailabel.models.export import save_encoder
    from drasclr_monailabel.models.intensity import LUNG_WINDOW
    from drasclr_monailabel.tasks.conf import parse_app_conf, resolve_app_conf
    from drasclr_monailabel.tasks.embedders import PatientEmbedder
    from drasclr_monailabel.tasks.model_store import ModelStore

    torch.manual_seed(seed)
    architecture = EncoderArchitecture()
    encoder_dir = studies.parent / "encoder"
    atlas = load_default_atlas()
    save_encoder(encoder_dir, DrasclrEncoder(architecture).state_dict(), {
        "method": "drasclr", "architecture": architecture.to_dict(), "atlas": {"id": atlas.atlas_id},
        "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": architecture.embedding_dim})
    conf = {"pretrained": str(encoder_dir), "device": "cpu", "auto_update_scoring": "false"}
    resolved = resolve_app_conf(parse_app_conf(conf), APP_DIR, str(studies))
    store = ModelStore(resolved.model_dir)
    store.model_dir.mkdir(parents=True, exist_ok=True)
    store.checkpoint.write_bytes(b"placeholder: strategies only read the file's identity")
    cache = EmbeddingCache(resolved.cache_dir, PatientEmbedder(resolved).key)
    plant_scores(EmphysemaDatastore(studies, resolved.state_dir), cache, store.version(), architecture.embedding_dim, seed)

    settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = conf
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    from monailabel.app import app

    clear_cache()
    client = TestClient(app)
    assert client.get("/info/").status_code == 200

    def ask(name: str) -> None:
        response = client.post(f"/activelearning/{name}", json={})
        assert response.status_code == 200 and "fallback" not in response.json().get("selection", {}), response.text

    return {f"POST /activelearning/{name}": timed(lambda n=name: ask(n), repeats) for name in APP_STRATEGIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128, help="embedding length at strategy level")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        studies = build_studies(Path(tmp), args.studies, args.labelled)
        results = strategy_level(studies, args.repeats, args.dim, args.seed)
        results.update(endpoint_level(studies, args.repeats, args.seed))
    baseline = results["epistemic (MONAI Label, baseline)"]["median_seconds"]
    for row in results.values():
        row["ratio_to_baseline"] = round(row["median_seconds"] / baseline, 2) if baseline > 0 else None
        row["meets_goal"] = max(row["max_seconds"], row["cold_seconds"]) <= GOAL_SECONDS
    report = {
        "benchmark": "next_sample",
        "studies": args.studies,
        "labelled": args.labelled,
        "repeats": args.repeats,
        "goal_seconds": GOAL_SECONDS,
        "results": results,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    write_json(args.out, report)
    for label, row in results.items():
        print(f"{label:36s} median {row['median_seconds']:.3f} s  max {row['max_seconds']:.3f} s  "
              f"cold {row['cold_seconds']:.3f} s  x{row['ratio_to_baseline']}")


if __name__ == "__main__":
    main()
