"""The whole chain on a synthetic cohort, through the CLI: synth -> preprocess -> brief DrasCLR
pretraining -> embed (pretrained and random-init copies) -> probe.

What is asserted is the behaviour of the chain, not a scientific claim: every scan is embedded
under its own id, the pretrained weights are the ones used, the probe joins phenotypes by id (the
phenotype file is written in another row order), recovers a target that is a linear function of
the embeddings, finds nothing in the same values given to the wrong subjects (no fold leakage),
and uses the same folds for both embeddings. Whether brief pretraining predicts severity better
than random init is a measurement, reported in docs/embeddings.md: with the realistic synthetic
emphysema of docs/data.md it does not at this size. About 1.5 minutes on 2 cores (14 scans), most of it
in ``drasclr synth`` and ``drasclr preprocess`` (registration).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from drasclr_monailabel.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
N_SCANS = 14
LANDMARKS = 128
# the demo recipe (120 steps) with a narrower encoder: a quarter of the CPU time
NARROW = ("--set", "model.encoder.stem_channels=4", "--set", "model.encoder.block_channels=[8,16,32]",
          "--set", "model.encoder.top_channels=64")


def run(*arguments: str) -> None:
    assert main(list(arguments)) == 0, f"drasclr {arguments[0]} failed"


def load_embeddings(folder: Path) -> tuple[list[str], np.ndarray]:
    with np.load(folder / "embeddings.npz", allow_pickle=False) as stored:
        return [str(i) for i in stored["ids"]], stored["embeddings"].astype(np.float64)


def planted_phenotypes(ids: list[str], embeddings: np.ndarray, path: Path) -> None:
    """``planted``: a seeded linear function of the standardised embeddings plus 10 % noise;
    ``planted_wrong_subject``: the same values moved to other subjects. Rows in reverse order.

    The function reads the embeddings' two principal directions: 14 subjects' embeddings vary
    mostly along one or two (97 % of the variance along the first, measured), and a seeded random
    direction of all 128 can fall where they barely vary, which no probe of 11 subjects recovers
    (pearson r 0.77 for one seed, 0.98-1.00 for others)."""
    rng = np.random.default_rng(7)
    scaled = (embeddings - embeddings.mean(0)) / (embeddings.std(0) + 1e-8)
    directions = np.linalg.svd(scaled, full_matrices=False)[2][:2]
    signal = scaled @ (directions.T @ rng.normal(size=2))
    planted = signal + 0.1 * signal.std() * rng.normal(size=len(ids))
    wrong = np.roll(planted, len(ids) // 2)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "planted", "planted_wrong_subject"])
        for index in reversed(range(len(ids))):
            writer.writerow([ids[index], f"{planted[index]:.6f}", f"{wrong[index]:.6f}"])


def probe(tmp_path: Path, embeddings: Path, phenotypes: Path, targets: list[str], name: str) -> dict:
    run("probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", *targets,
        "--out", str(tmp_path / name))
    return json.loads((tmp_path / name / "probe.json").read_text())["targets"]


def folds(predictions: Path, target: str) -> dict[str, str]:
    with predictions.open() as handle:
        return {row["id"]: row["fold"] for row in csv.DictReader(handle) if row["target"] == target}


def test_embed_and_probe_chain_on_a_pretrained_and_a_random_init_encoder(tmp_path: Path) -> None:
    cohort, cache, encoder = tmp_path / "cohort", tmp_path / "cache", tmp_path / "run"
    run("synth", "--n", str(N_SCANS), "--source", "phantom", "--severity", "0", "40", "--phantom-spacing", "3", "3", "3",
        "--out", str(cohort), "--no-progress")
    run("preprocess", str(cohort / "manifest.csv"), "--out", str(cache), "--no-progress")
    run("pretrain", "--config", str(REPOSITORY / "configs" / "drasclr_demo.yaml"), "--cache", str(cache), "--out", str(encoder),
        "--set", "train.device=cpu", "--set", "train.progress=false", *NARROW)
    for name, extra in (("trained", []), ("random", ["--random-init", "0"])):
        run("embed", "--encoder", str(encoder), "--cache", str(cache), "--out", str(tmp_path / f"emb_{name}"),
            "--max-landmarks", str(LANDMARKS), "--device", "cpu", "--no-progress", *extra)

    with (cohort / "manifest.csv").open() as handle:
        manifest_ids = sorted(row["id"] for row in csv.DictReader(handle))
    ids, trained = load_embeddings(tmp_path / "emb_trained")
    random_ids, random_init = load_embeddings(tmp_path / "emb_random")
    assert sorted(ids) == manifest_ids and random_ids == ids
    assert np.isfinite(trained).all() and (trained.std(axis=0) > 0).mean() > 0.9  # subjects differ in most dimensions
    assert not np.allclose(trained, random_init, atol=1e-3)  # the pretrained weights were loaded

    phenotypes = tmp_path / "planted.csv"
    planted_phenotypes(ids, trained, phenotypes)
    result = probe(tmp_path, tmp_path / "emb_trained", phenotypes, ["planted", "planted_wrong_subject"], "probe_planted")
    assert result["planted"]["pooled"]["pearson_r"] > 0.8, result["planted"]["pooled"]
    assert result["planted_wrong_subject"]["pooled"]["r2"] < 0.2, result["planted_wrong_subject"]["pooled"]

    severity = {name: probe(tmp_path, tmp_path / f"emb_{name}", cohort / "manifest.csv", ["severity"], f"probe_{name}")
                for name in ("trained", "random")}
    assert all(np.isfinite(list(block["severity"]["pooled"].values())).all() for block in severity.values())
    trained_folds = folds(tmp_path / "probe_trained" / "predictions.csv", "severity")
    assert sorted(trained_folds) == manifest_ids
    assert trained_folds == folds(tmp_path / "probe_random" / "predictions.csv", "severity")  # like with like
