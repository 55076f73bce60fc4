"""Active-learning strategies: which unlabelled scan to annotate next.

- ``epistemic``: the scan on which the current model is most uncertain (MC-dropout mutual
  information, stored by :class:`~drasclr_monailabel.tasks.scoring.EpistemicScoring`). Scores of
  an older model or of a changed scan are ignored.
- ``diversity``: k-center greedy over patient-level embeddings (stored by
  :class:`~drasclr_monailabel.tasks.scoring.EmbeddingScoring`; DrasCLR or joint2d3d, see
  :mod:`~drasclr_monailabel.tasks.embedders`): the unlabelled scan farthest from every labelled
  one. Needs no trained model, so it works from the first scan on.
- ``hybrid``: uncertainty times diversity, both scaled to [0, 1] over the candidates: an uncertain
  scan that is also unlike everything labelled.

Why anatomy-aware diversity: the embedding is the mean of encoder outputs at the same atlas
landmarks in every patient, from an encoder trained to tell lung tissue patterns at a given
anatomical place apart. Distances between scans therefore compare the lungs region by region
(upper-lobe centrilobular holes against lower-lobe panlobular loss) and are not dominated by what
a generic image embedding sees first: body size, field of view, scanner noise. Covering that space
spreads the labels over disease patterns and places, which a model fine-tuned on few labels needs.
A joint2d3d volume embedding compares whole scans slice by slice in order instead; it needs no
registration, so diversity keeps working for scans the atlas cannot place.
Uncertainty alone tends to pick near-duplicates (similar hard scans in a row); diversity alone
ignores what the model already handles; the hybrid keeps both.

``first`` (by id) and ``random`` replace MONAI Label's strategies of those names, which ignore
reservations. Every strategy skips scans handed out within ``reserve_seconds`` (two annotators working at once
get different scans) unless nothing else is left, and falls back to the first unlabelled scan,
saying why, when its scores are not available yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache
from drasclr_monailabel.tasks.kcenter import k_center_greedy
from drasclr_monailabel.utils.fingerprint import file_fingerprint

logger = logging.getLogger(__name__)

EPISTEMIC_KEY = "epistemic"
"""Image-info key under which the epistemic score is stored: {"score", "model", "image", "ts"}."""


def candidate_pool(datastore: Datastore, reserve_seconds: float, now: float | None = None) -> tuple[list[str], list[str]]:
    """``(candidates, labelled)``: unlabelled scans not handed out recently (all unlabelled ones if
    every one was), and the labelled scans; both sorted by id."""
    now = time.time() if now is None else now
    unlabelled = sorted(datastore.get_unlabeled_images())
    labelled = sorted(datastore.get_labeled_images())
    free = [i for i in unlabelled if now - _last_served(datastore.get_image_info(i)) >= reserve_seconds]
    return (free or unlabelled), labelled


def valid_epistemic_scores(datastore: Datastore, images: list[str], model_version: str | None) -> dict[str, float]:
    """Stored epistemic scores that belong to the current model and the current scan content."""
    if model_version is None:
        return {}
    scores = {}
    for image in images:
        info = datastore.get_image_info(image)
        entry = info.get(EPISTEMIC_KEY)
        if (isinstance(entry, dict) and entry.get("model") == model_version
                and entry.get("image") == file_fingerprint(info.get("path", ""))):
            scores[image] = float(entry["score"])
    return scores


def cached_embeddings(datastore: Datastore, cache: EmbeddingCache, images: list[str]) -> dict[str, np.ndarray]:
    """Embeddings in ``cache`` that match the scans' current content."""
    found = {}
    for image in images:
        vector = cache.get(image, file_fingerprint(datastore.get_image_uri(image)))
        if vector is not None:
            found[image] = vector
    return found


class _Selecting(Strategy):
    """Shared shape: list candidates, rank them, answer ``{"id", "selection": {...}}``."""

    name = ""

    def __init__(self, description: str, reserve_seconds: float) -> None:
        super().__init__(description)
        self.reserve_seconds = reserve_seconds

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        candidates, labelled = candidate_pool(datastore, self.reserve_seconds)
        if not candidates:
            return None
        image, details = self.select(candidates, labelled, datastore)
        logger.info("%s: selected %s (%s)", self.name, image, details)
        return {"id": image, "selection": {"strategy": self.name, "candidates": len(candidates), **details}}

    def select(self, candidates: list[str], labelled: list[str], datastore: Datastore) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    @staticmethod
    def fallback(candidates: list[str], reason: str) -> tuple[str, dict[str, Any]]:
        return candidates[0], {"fallback": "first", "reason": reason}


class FirstStrategy(_Selecting):
    """The first unlabelled scan by id that was not handed out recently."""

    name = "first"

    def __init__(self, reserve_seconds: float = 600) -> None:
        super().__init__("First unlabelled scan (by id) not handed to another annotator", reserve_seconds)

    def select(self, candidates, labelled, datastore):
        return candidates[0], {}


class RandomStrategy(_Selecting):
    """A random unlabelled scan among those not handed out recently."""

    name = "random"

    def __init__(self, reserve_seconds: float = 600, seed: int | None = None) -> None:
        super().__init__("Random unlabelled scan not handed to another annotator", reserve_seconds)
        self.rng = np.random.default_rng(seed)

    def select(self, candidates, labelled, datastore):
        return candidates[int(self.rng.integers(len(candidates)))], {}


class EpistemicStrategy(_Selecting):
    """The scan with the highest epistemic (MC-dropout) score of the current model."""

    name = "epistemic"

    def __init__(self, model_version: Callable[[], str | None], reserve_seconds: float = 600) -> None:
        super().__init__("Most uncertain scan for the current model (MC-dropout mutual information)", reserve_seconds)
        self.model_version = model_version

    def select(self, candidates, labelled, datastore):
        version = self.model_version()
        if version is None:
            return self.fallback(candidates, "no trained model yet: save labels and train first")
        scores = valid_epistemic_scores(datastore, candidates, version)
        if not scores:
            return self.fallback(candidates, "no epistemic scores for the current model yet: run scoring 'epistemic'")
        image = max(scores, key=lambda i: (scores[i], i))
        return image, {"score": scores[image], "scored": len(scores)}


class DiversityStrategy(_Selecting):
    """k-center greedy over patient-level embeddings: the scan least like any labelled one.
    ``kind`` names the embeddings for the description clients show."""

    name = "diversity"

    def __init__(self, cache: EmbeddingCache, reserve_seconds: float = 600, kind: str = "DrasCLR patient embeddings") -> None:
        super().__init__(f"Scan least like the labelled ones (k-center over {kind})", reserve_seconds)
        self.cache = cache

    def select(self, candidates, labelled, datastore):
        pool = cached_embeddings(datastore, self.cache, candidates)
        if not pool:
            return self.fallback(candidates, "no embeddings cached yet: run scoring 'embedding'")
        anchors = cached_embeddings(datastore, self.cache, labelled)
        ids = sorted(pool)
        picks, distances = k_center_greedy(np.stack([pool[i] for i in ids]), _stack(anchors), k=1)
        image = ids[picks[0]]
        distance = float(distances[picks[0]])
        return image, {"distance": distance if np.isfinite(distance) else None, "embedded": len(ids),
                       "labelled_embedded": len(anchors)}


class HybridStrategy(_Selecting):
    """Epistemic score x k-center distance, each scaled to [0, 1] over the candidates."""

    name = "hybrid"

    def __init__(self, model_version: Callable[[], str | None], cache: EmbeddingCache, reserve_seconds: float = 600) -> None:
        super().__init__("Uncertain and unlike the labelled scans (epistemic score x diversity)", reserve_seconds)
        self.model_version = model_version
        self.cache = cache

    def select(self, candidates, labelled, datastore):
        scores = valid_epistemic_scores(datastore, candidates, self.model_version())
        pool = cached_embeddings(datastore, self.cache, candidates)
        anchors = cached_embeddings(datastore, self.cache, labelled)
        both = sorted(set(scores) & set(pool))
        if not both:
            if scores:
                image = max(scores, key=lambda i: (scores[i], i))
                return image, {"score": scores[image], "reason": "no embeddings cached yet: ranked by uncertainty only"}
            if pool:
                ids = sorted(pool)
                picks, _ = k_center_greedy(np.stack([pool[i] for i in ids]), _stack(anchors), k=1)
                return ids[picks[0]], {"reason": "no epistemic scores for the current model yet: ranked by diversity only"}
            return self.fallback(candidates, "neither epistemic scores nor embeddings are available yet")
        uncertainty = np.array([scores[i] for i in both], dtype=np.float64)
        _, distances = k_center_greedy(np.stack([pool[i] for i in both]), _stack(anchors), k=0)
        diversity = np.ones_like(uncertainty) if not np.all(np.isfinite(distances)) else distances.astype(np.float64)
        combined = _unit(uncertainty) * _unit(diversity)
        best = int(np.argmax(combined))
        return both[best], {"score": float(combined[best]), "uncertainty": float(uncertainty[best]),
                            "distance": float(diversity[best]) if np.isfinite(distances).all() else None}


def _unit(values: np.ndarray) -> np.ndarray:
    """Scale non-negative values to [0, 1] by their maximum (all ones if the maximum is 0)."""
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.ones_like(values)


def _stack(vectors: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack(list(vectors.values())) if vectors else np.zeros((0, 1), dtype=np.float32)


def _last_served(info: dict[str, Any]) -> float:
    served = info.get("strategy")
    if not isinstance(served, dict):
        return 0.0
    stamps = [float(v.get("ts", 0)) for v in served.values() if isinstance(v, dict)]
    return max(stamps, default=0.0)
