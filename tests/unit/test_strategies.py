"""Active-learning strategies and their maths, on a real local datastore with placeholder scans.

Strategies read only the datastore index, scan fingerprints and cached scores, so the scans here
are small placeholder files; the embeddings and scores are planted where the scoring methods put
them.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from drasclr_monailabel.tasks.datastore import EmphysemaDatastore
from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache
from drasclr_monailabel.tasks.kcenter import k_center_greedy, min_distances, normalise
from drasclr_monailabel.tasks.scoring import mc_dropout_score, mutual_information
from drasclr_monailabel.tasks.strategies import EPISTEMIC_KEY, DiversityStrategy, EpistemicStrategy, HybridStrategy, RandomStrategy
from drasclr_monailabel.utils.fingerprint import file_fingerprint


def make_store(tmp_path, ids, labelled=()):
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image_id in ids:
        (studies / f"{image_id}.nii.gz").write_bytes(image_id.encode())
    for image_id in labelled:
        (studies / "labels" / "final" / f"{image_id}.nii.gz").write_bytes(b"label")
    return EmphysemaDatastore(studies, studies / ".drasclr")


def plant_embeddings(store, cache, vectors):
    for image_id, vector in vectors.items():
        cache.put(image_id, file_fingerprint(store.get_image_uri(image_id)), np.asarray(vector, dtype=np.float32))


def plant_score(store, image_id, score, model="v1"):
    entry = {"score": score, "model": model, "image": file_fingerprint(store.get_image_uri(image_id))}
    store.update_image_info(image_id, {EPISTEMIC_KEY: entry})


def ask(strategy, store, name):
    return strategy({"strategy": name}, store)


# ---- maths ---------------------------------------------------------------------------------

def test_min_distances_match_brute_force():
    rng = np.random.default_rng(0)
    x, a = rng.normal(size=(30, 8)), rng.normal(size=(5, 8))
    expected = np.array([min(np.linalg.norm(p - q) for q in a) for p in x])
    assert np.allclose(min_distances(x, a), expected, atol=1e-4)
    assert np.all(np.isinf(min_distances(x, a[:0])))


def test_k_center_picks_the_farthest_point_and_then_covers_the_rest():
    anchors = normalise(np.array([[1.0, 0.0, 0.0]]))
    candidates = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    picks, distances = k_center_greedy(candidates, anchors, k=3)
    assert picks[0] == 2  # opposite to the labelled direction
    assert sorted(picks) == [1, 2, 3]  # then the two orthogonal ones, never the near-duplicate of the anchor
    assert distances[0] == pytest.approx(np.linalg.norm(normalise(candidates[:1]) - anchors), abs=1e-5)


def test_k_center_without_labels_starts_from_the_most_typical_scan():
    candidates = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.1]])
    picks, distances = k_center_greedy(candidates, np.zeros((0, 2)), k=2)
    mean = normalise(candidates).mean(axis=0)
    assert picks[0] == int(np.argmin(np.linalg.norm(normalise(candidates) - mean, axis=1)))
    assert np.all(np.isinf(distances))


def test_mutual_information_is_zero_when_passes_agree_and_positive_when_they_disagree():
    agree = np.array([[0.5, 0.5]]).T
    assert mutual_information(agree, -np.sum(agree * np.log(agree), axis=0)) == pytest.approx(0.0, abs=1e-6)
    samples = iter([np.array([[0.99], [0.01]]), np.array([[0.01], [0.99]])])
    disagreement = mc_dropout_score(lambda: next(samples), 2, np.ones(1))
    constant = mc_dropout_score(lambda: np.array([[0.5], [0.5]]), 2, np.ones(1))
    assert disagreement > 0.5 and constant == pytest.approx(0.0, abs=1e-6)
    region = np.array([1, 0])
    masked = mc_dropout_score(lambda: np.array([[0.5, 0.9], [0.5, 0.1]]), 3, region)
    assert masked == pytest.approx(0.0, abs=1e-6)


# ---- strategies ----------------------------------------------------------------------------

def test_diversity_picks_the_scan_least_like_the_labelled_ones(tmp_path):
    store = make_store(tmp_path, ["a1", "a2", "b1", "c1"], labelled=["a1"])
    cache = EmbeddingCache(tmp_path / "cache", "enc")
    plant_embeddings(store, cache, {"a1": [1, 0, 0], "a2": [0.95, 0.05, 0], "b1": [0, 1, 0], "c1": [-1, 0.1, 0]})
    strategy = DiversityStrategy(cache, reserve_seconds=0)
    answer = ask(strategy, store, "diversity")
    assert answer["id"] == "c1"
    assert answer["selection"]["labelled_embedded"] == 1
    (tmp_path / "studies" / "labels" / "final" / "c1.nii.gz").write_bytes(b"label")
    store.refresh()
    assert ask(strategy, store, "diversity")["id"] == "b1"


def test_diversity_ignores_embeddings_of_a_changed_scan_or_another_encoder(tmp_path):
    store = make_store(tmp_path, ["a", "b"])
    cache = EmbeddingCache(tmp_path / "cache", "enc")
    plant_embeddings(store, cache, {"a": [1, 0], "b": [0, 1]})
    path = store.get_image_uri("b")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.get("b", file_fingerprint(path)) is None
    assert cache.get("a", file_fingerprint(store.get_image_uri("a"))) is not None
    other = EmbeddingCache(tmp_path / "cache", "another-encoder")
    assert other.get("a", file_fingerprint(store.get_image_uri("a"))) is None
    empty = make_store(tmp_path / "x", ["p", "q"])
    answer = ask(DiversityStrategy(EmbeddingCache(tmp_path / "none", "enc"), 0), empty, "diversity")
    assert answer["id"] == "p" and answer["selection"]["fallback"] == "first"
    assert "scoring 'embedding'" in answer["selection"]["reason"]


def test_epistemic_uses_only_scores_of_the_current_model(tmp_path):
    store = make_store(tmp_path, ["a", "b", "c"])
    version = {"v": "v2"}
    strategy = EpistemicStrategy(lambda: version["v"], reserve_seconds=0)
    plant_score(store, "a", 0.9, model="v1")
    plant_score(store, "b", 0.2, model="v2")
    plant_score(store, "c", 0.4, model="v2")
    assert ask(strategy, store, "epistemic")["id"] == "c"
    version["v"] = "v3"
    answer = ask(strategy, store, "epistemic")
    assert answer["selection"]["fallback"] == "first"
    version["v"] = None
    assert "no trained model" in ask(strategy, store, "epistemic")["selection"]["reason"]


def test_hybrid_prefers_an_uncertain_scan_unlike_the_labelled_ones(tmp_path):
    store = make_store(tmp_path, ["lab", "near", "far"], labelled=["lab"])
    cache = EmbeddingCache(tmp_path / "cache", "enc")
    plant_embeddings(store, cache, {"lab": [1, 0], "near": [0.99, 0.05], "far": [-1, 0.2]})
    plant_score(store, "near", 0.50)
    plant_score(store, "far", 0.40)
    assert ask(EpistemicStrategy(lambda: "v1", 0), store, "epistemic")["id"] == "near"
    answer = ask(HybridStrategy(lambda: "v1", cache, 0), store, "hybrid")
    assert answer["id"] == "far"
    assert 0 < answer["selection"]["score"] <= 1


def test_hybrid_falls_back_to_whichever_signal_exists(tmp_path):
    store = make_store(tmp_path, ["a", "b"])
    cache = EmbeddingCache(tmp_path / "cache", "enc")
    plant_score(store, "b", 0.3)
    answer = ask(HybridStrategy(lambda: "v1", cache, 0), store, "hybrid")
    assert answer["id"] == "b" and "uncertainty only" in answer["selection"]["reason"]


def test_a_scan_handed_out_recently_goes_to_nobody_else_while_others_remain(tmp_path):
    store = make_store(tmp_path, ["a", "b"])
    cache = EmbeddingCache(tmp_path / "cache", "enc")
    plant_embeddings(store, cache, {"a": [1, 0], "b": [0, 1]})
    strategy = DiversityStrategy(cache, reserve_seconds=600)
    first = ask(strategy, store, "diversity")["id"]
    store.update_image_info(first, {"strategy": {"diversity": {"ts": int(time.time())}}})
    second = ask(strategy, store, "diversity")["id"]
    assert second != first
    store.update_image_info(second, {"strategy": {"diversity": {"ts": int(time.time())}}})
    assert ask(strategy, store, "diversity")["id"] in {"a", "b"}


def test_random_strategy_with_a_seed_repeats_its_picks(tmp_path):
    """The app seeds ``random`` with its ``seed`` option, so a rerun of a session proposes the same scans."""
    store = make_store(tmp_path, [f"s{i:02d}" for i in range(20)])

    def picks(seed):
        strategy = RandomStrategy(reserve_seconds=0, seed=seed)
        return [ask(strategy, store, "random")["id"] for _ in range(6)]

    assert picks(3) == picks(3)
    assert picks(3) != picks(4)


def test_no_unlabelled_scans_means_no_answer(tmp_path):
    store = make_store(tmp_path, ["a"], labelled=["a"])
    assert ask(EpistemicStrategy(lambda: "v1", 0), store, "epistemic") is None


def test_scores_written_by_another_process_are_seen_at_once(tmp_path):
    server_view = make_store(tmp_path, ["a", "b"])
    scoring_process_view = EmphysemaDatastore(tmp_path / "studies", tmp_path / "studies" / ".drasclr")
    strategy = EpistemicStrategy(lambda: "v1", reserve_seconds=0)
    assert ask(strategy, server_view, "epistemic")["selection"]["fallback"] == "first"
    plant_score(scoring_process_view, "b", 0.7)
    answer = ask(strategy, server_view, "epistemic")
    assert answer["id"] == "b" and answer["selection"]["score"] == pytest.approx(0.7)
