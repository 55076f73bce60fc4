"""`drasclr embed` on a synthetic preprocessing cache: file format, contract with the encoder, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drasclr_monailabel.cli.main import main
from drasclr_monailabel.embed.cohort import EmbedSettings, cache_inputs, embed_cohort
from drasclr_monailabel.embed.store import (
    load_embeddings,
    load_landmark_embeddings,
    read_scan,
)
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.cache import read_atlas_landmarks
from tests.fixtures.embed import export_random_encoder


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures/threads.py


def embed(encoder: Path, cache: Path, atlas: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--encoder", str(encoder), "--cache", str(cache), "--atlas", str(atlas), "--out", str(out),
                 "--device", "cpu", "--no-progress", *extra])


def test_embedding_folder_format(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    assert embed(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path / "emb") == 0
    ids, patient, metadata = load_embeddings(tmp_path / "emb")
    cache_ids = sorted(p.name for p in synthetic_cache.iterdir() if p.is_dir())
    assert ids.tolist() == cache_ids and patient.shape == (6, 16) and patient.dtype == np.float32
    assert metadata["format"] == "drasclr-embeddings/1" and metadata["method"] == "drasclr"
    assert metadata["atlas"]["id"] == "synthetic-grid" and metadata["pooling"] == {"name": "mean"}
    assert len(metadata["encoder"]["id"]) == 12
    _, landmarks, valid = load_landmark_embeddings(tmp_path / "emb")
    assert landmarks.shape == (6, 27, 16)
    for k, scan_id in enumerate(ids):
        cache_valid = np.load(synthetic_cache / scan_id / f"{scan_id}_valid.npy")
        assert np.array_equal(valid[k], cache_valid)  # invalid landmarks are marked ...
        assert np.isnan(landmarks[k][~cache_valid]).all() and np.isfinite(landmarks[k][cache_valid]).all()  # ... and empty
        np.testing.assert_allclose(patient[k], landmarks[k][cache_valid].mean(axis=0), rtol=1e-5, atol=1e-6)
    with open(tmp_path / "emb" / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == cache_ids and all(int(r["n_valid"]) == v.sum() for r, v in zip(rows, valid))


def test_landmark_embedding_is_the_encoder_output_of_the_cache_patch(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    embed_cohort(grid_encoder, cache_inputs(synthetic_cache), tmp_path / "emb", EmbedSettings(atlas_dir=synthetic_atlas, progress=False))
    scan_id = "synth002"
    record = read_scan(tmp_path / "emb" / "scans" / f"{scan_id}.npz")
    landmark = int(np.flatnonzero(record.arrays["valid"])[3])
    image = np.load(synthetic_cache / scan_id / f"{scan_id}_image.npy")
    z, y, x = np.load(synthetic_cache / scan_id / f"{scan_id}_landmarks.npy")[landmark]
    patch = torch.from_numpy(image[z - 16 : z + 16, y - 16 : y + 16, x - 16 : x + 16].copy())
    encoder, _ = load_encoder(grid_encoder)
    location = torch.from_numpy(read_atlas_landmarks(synthetic_atlas).coordinates[landmark])
    with torch.no_grad():
        expected = encoder(LUNG_WINDOW(patch)[None, None], location)[0].numpy()
    np.testing.assert_allclose(record.arrays["landmarks"][landmark], expected, rtol=1e-4, atol=1e-5)


def test_rerun_skips_scans_of_the_same_encoder_and_redoes_another(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    settings = EmbedSettings(atlas_dir=synthetic_atlas, progress=False)
    first = embed_cohort(grid_encoder, cache_inputs(synthetic_cache), tmp_path / "emb", settings)
    patient_first = load_embeddings(tmp_path / "emb")[1]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "scans").iterdir()}
    (tmp_path / "emb" / "scans" / "synth001.npz").unlink()  # as if killed before this scan was written
    second = embed_cohort(grid_encoder, cache_inputs(synthetic_cache), tmp_path / "emb", settings)
    assert (first.done, second.done, second.skipped) == (6, 1, 5)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "scans").iterdir()}
    assert all(after[name] == before[name] for name in before if name != "synth001.npz")
    other = export_random_encoder(tmp_path / "other", seed=1)
    third = embed_cohort(other, cache_inputs(synthetic_cache), tmp_path / "emb", settings)
    assert (third.done, third.skipped) == (6, 0)
    _, patient_other, meta = load_embeddings(tmp_path / "emb")
    assert not np.allclose(patient_other, patient_first)
    assert meta["encoder"]["path"] == str(other.resolve())


def test_max_landmarks_embeds_the_same_evenly_spread_landmarks(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    assert embed(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path / "emb", "--max-landmarks", "5") == 0
    _, _, valid = load_landmark_embeddings(tmp_path / "emb")
    assert (valid.sum(axis=1) == 5).all()
    ids, _, metadata = load_embeddings(tmp_path / "emb")
    assert metadata["max_landmarks"] == 5
    for k, scan_id in enumerate(ids):
        assert not (valid[k] & ~np.load(synthetic_cache / scan_id / f"{scan_id}_valid.npy")).any()


def test_attention_pooling_writes_weights_and_reference(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    assert embed(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path / "emb", "--pooling", "attention") == 0
    with np.load(tmp_path / "emb" / "embeddings.npz") as data:
        weights, patient, reference_mean = data["attention_weights"], data["embeddings"], data["reference_mean"]
    _, landmarks, valid = load_landmark_embeddings(tmp_path / "emb")
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert (weights[~valid] == 0).all() and (weights[valid] > 0).all()
    np.testing.assert_allclose(patient, np.einsum("nl,nld->nd", weights, np.nan_to_num(landmarks)), rtol=1e-4, atol=1e-6)
    assert reference_mean.shape == (27, 16)
    assert json.loads((tmp_path / "emb" / "embeddings.json").read_text())["pooling"]["name"] == "attention"


def test_a_broken_scan_is_listed_and_the_others_are_embedded(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path, capsys):
    import shutil

    cache = Path(shutil.copytree(synthetic_cache, tmp_path / "cache"))
    (cache / "synth003" / "synth003_valid.npy").write_bytes(b"not an array")
    assert embed(grid_encoder, cache, synthetic_atlas, tmp_path / "emb") == 1
    assert "failed synth003" in capsys.readouterr().out
    ids, _, metadata = load_embeddings(tmp_path / "emb")
    assert "synth003" not in ids and len(ids) == 5
    assert metadata["failures"][0]["id"] == "synth003" and "synth003_valid.npy" in metadata["failures"][0]["reason"]


def test_encoder_of_another_atlas_is_refused(synthetic_cache, synthetic_atlas, tmp_path, capsys):
    encoder = export_random_encoder(tmp_path / "enc", seed=0, atlas_id="another-atlas")
    assert embed(encoder, synthetic_cache, synthetic_atlas, tmp_path / "emb") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "encoder.json" in error and "another-atlas" in error
    assert not (tmp_path / "emb" / "embeddings.json").exists()


@pytest.mark.parametrize("arguments, expected", [
    (["--cache", "{cache}", "{cache}"], "exactly one input"),
    ([], "exactly one input"),
    (["--manifest", "{cache}/summary.json"], "not a CSV manifest"),
    (["--cache", "{empty}"], "no complete preprocessed scan"),
    (["--cache", "{cache}", "--method", "joint2d3d"], "holds a drasclr encoder"),
])
def test_bad_inputs_give_one_line_and_exit_2(arguments, expected, grid_encoder, synthetic_cache, synthetic_atlas, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    filled = [a.format(cache=synthetic_cache, empty=tmp_path / "empty") for a in arguments]
    code = main(["embed", "--encoder", str(grid_encoder), "--atlas", str(synthetic_atlas), "--out", str(tmp_path / "emb"),
                 "--device", "cpu", "--no-progress", *filled])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and expected in error


def test_random_init_baseline_has_the_architecture_and_seeded_weights(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path):
    assert embed(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path / "trained") == 0
    for name in ("a", "b"):
        assert embed(grid_encoder, synthetic_cache, synthetic_atlas, tmp_path / name, "--random-init", "7") == 0
    trained, a, b = (load_embeddings(tmp_path / name) for name in ("trained", "a", "b"))
    assert a[1].shape == trained[1].shape and not np.allclose(a[1], trained[1])
    np.testing.assert_array_equal(a[1], b[1])  # the same seed, the same baseline
    assert a[2]["encoder"]["training"] == {"random_init": {"seed": 7, "architecture_of": str(grid_encoder.resolve())}}
    second = embed_cohort(grid_encoder, cache_inputs(synthetic_cache), tmp_path / "a",
                          EmbedSettings(atlas_dir=synthetic_atlas, random_init=7, progress=False))
    assert (second.done, second.skipped) == (0, 6)


def test_joint2d3d_encoder_writes_slices_volumes_and_the_same_patient_format(tiny_recipe, phantom_volume_dir, tmp_path, capsys):
    from drasclr_monailabel.ssl.joint2d3d.embed import embed_volume
    from drasclr_monailabel.ssl.trainer import run_pretraining

    assert run_pretraining(tiny_recipe(), phantom_volume_dir, tmp_path / "run").completed
    arguments = ["embed", "--encoder", str(tmp_path / "run"), str(phantom_volume_dir), "--device", "cpu", "--no-progress"]
    assert main([*arguments, "--out", str(tmp_path / "emb")]) == 0
    ids, patient, metadata = load_embeddings(tmp_path / "emb")
    assert ids.tolist() == ["phantom0", "phantom1", "phantom2"] and patient.shape == (3, 32)
    assert metadata["method"] == "joint2d3d" and metadata["max_landmarks"] is None
    record = read_scan(tmp_path / "emb" / "scans" / "phantom1.npz")
    slices, volume = embed_volume(tmp_path / "run", phantom_volume_dir / "phantom1.nii.gz")
    np.testing.assert_allclose(record.arrays["slices"], slices, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(patient[1], volume, rtol=1e-5, atol=1e-6)
    assert main([*arguments, "--out", str(tmp_path / "att"), "--pooling", "attention"]) == 2
    assert "--pooling" in capsys.readouterr().err
