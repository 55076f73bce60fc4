"""MONAI Label scoring methods: what the ``epistemic``, ``diversity`` and ``hybrid`` strategies rank by.

- :class:`EpistemicScoring` runs the published emphysema model several times with its dropout
  active (MC dropout) on every unlabelled scan (on windows sampled in the lung, see
  :meth:`~drasclr_monailabel.tasks.infer.EmphysemaInferTask.epistemic_score`) and stores the mean
  mutual information between the prediction and the model weights inside the lung (BALD): high
  where the passes disagree, i.e. where the model lacks knowledge, not where the image is merely
  ambiguous. Scores carry the
  model version and the scan's fingerprint, so a new model or a changed scan is scored again and
  unchanged pairs are skipped.
- :class:`EmbeddingScoring` computes a patient-level embedding of every scan (labelled ones too:
  they are the anchors of k-center) into the per-scan
  :class:`~drasclr_monailabel.tasks.embedding_cache.EmbeddingCache`, with the pretrained encoder's
  embedder (:mod:`~drasclr_monailabel.tasks.embedders`: DrasCLR landmark mean, or the joint2d3d
  volume embedding, which needs no registration).

Both skip a scan that fails (e.g. no lungs) with its reason recorded, and count it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache
from drasclr_monailabel.tasks.strategies import EPISTEMIC_KEY
from drasclr_monailabel.utils.fingerprint import file_fingerprint

logger = logging.getLogger(__name__)

EMBEDDING_ERROR_KEY = "embedding_error"
EPS = 1e-8


def mutual_information(mean_probabilities: np.ndarray, mean_entropy: np.ndarray) -> np.ndarray:
    """BALD per voxel: H[mean_t p_t] - mean_t H[p_t] (nats, >= 0).

    Args:
        mean_probabilities: (C, ...) class probabilities averaged over the stochastic passes.
        mean_entropy: (...) entropy of each pass's probabilities, averaged over the passes.
    """
    predictive = -np.sum(mean_probabilities * np.log(mean_probabilities + EPS), axis=0)
    return np.maximum(predictive - mean_entropy, 0.0)


def mc_dropout_score(sample: Callable[[], np.ndarray], passes: int, region: np.ndarray) -> float:
    """Mean mutual information over ``region`` from ``passes`` calls of ``sample`` -> (C, ...) probabilities.

    Running sums keep memory at two maps whatever the number of passes.
    """
    if passes < 2:
        raise ValueError("MC dropout needs at least 2 passes")
    total_p: np.ndarray | None = None
    total_h: np.ndarray | None = None
    for _ in range(passes):
        p = sample().astype(np.float32, copy=False)
        h = -np.sum(p * np.log(p + EPS), axis=0)
        total_p = p.copy() if total_p is None else total_p + p
        total_h = h if total_h is None else total_h + h
    assert total_p is not None and total_h is not None
    mi = mutual_information(total_p / passes, total_h / passes)
    inside = region > 0
    return float(mi[inside].mean()) if inside.any() else 0.0


class EpistemicScoring(ScoringMethod):
    """MC-dropout epistemic uncertainty of the published emphysema model on unlabelled scans.

    Args:
        score_volume: ``(volume, passes) -> score`` with the current model (the emphysema infer
            task's :meth:`epistemic_score`).
        model_version: the published model's version, None before the first training round.
        passes: stochastic forward passes per scan (at least 2).
        max_images: score at most this many scans per call (0 = all).
    """

    def __init__(self, score_volume: Callable[[CTVolume, int], float], model_version: Callable[[], str | None],
                 passes: int = 4, max_images: int = 0) -> None:
        super().__init__("Epistemic uncertainty (MC dropout) of the emphysema model on unlabelled scans")
        self.score_volume = score_volume
        self.model_version = model_version
        self.passes = passes
        self.max_images = max_images

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.perf_counter()
        version = self.model_version()
        unlabelled = sorted(datastore.get_unlabeled_images())
        if version is None:
            return {"total": len(unlabelled), "scored": 0, "skipped": len(unlabelled), "failed": 0,
                    "reason": "no trained model yet"}
        todo = []
        for image in unlabelled:
            entry = datastore.get_image_info(image).get(EPISTEMIC_KEY)
            current = isinstance(entry, dict) and entry.get("model") == version
            if not (current and entry.get("image") == file_fingerprint(datastore.get_image_uri(image))):
                todo.append(image)
        limit = int(request.get("max_images", self.max_images) or 0)
        todo = todo[:limit] if limit else todo
        passes = max(2, int(request.get("passes", self.passes)))
        scored = failed = 0
        for image in todo:
            path = datastore.get_image_uri(image)
            fingerprint = file_fingerprint(path)
            entry: dict[str, Any] = {"model": version, "image": fingerprint, "ts": int(time.time()), "passes": passes}
            try:
                entry["score"] = self.score_volume(read_ct(path), passes)
                scored += 1
            except DrasclrError as exc:
                entry.update(score=0.0, error=str(exc))
                failed += 1
                logger.warning("epistemic: %s skipped: %s", image, exc)
            datastore.update_image_info(image, {EPISTEMIC_KEY: entry})
            logger.info("epistemic: %s -> %s", image, entry.get("score"))
        return {"total": len(unlabelled), "scored": scored, "skipped": len(unlabelled) - len(todo), "failed": failed,
                "model": version, "seconds": round(time.perf_counter() - start, 2)}


class EmbeddingScoring(ScoringMethod):
    """Patient-level embeddings of all scans into the per-scan cache.

    Args:
        embed: ``volume -> (D,)`` embedding (built lazily: the encoder loads on first use).
        cache: where the vectors go, keyed by scan fingerprint and encoder.
        kind: what the embeddings are, for the description clients show.
    """

    def __init__(self, embed: Callable[[CTVolume], np.ndarray], cache: EmbeddingCache,
                 kind: str = "DrasCLR patient embeddings") -> None:
        super().__init__(f"{kind[0].upper()}{kind[1:]} of every scan (for the diversity and hybrid strategies)")
        self.embed = embed
        self.cache = cache

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.perf_counter()
        images = sorted(datastore.list_images())
        computed = failed = cached = 0
        for image in images:
            path = datastore.get_image_uri(image)
            fingerprint = file_fingerprint(path)
            if fingerprint is None:
                continue
            if self.cache.get(image, fingerprint) is not None:
                cached += 1
                continue
            error = datastore.get_image_info(image).get(EMBEDDING_ERROR_KEY)
            if isinstance(error, dict) and error.get("image") == fingerprint and error.get("encoder") == self.cache.encoder_key:
                failed += 1
                continue
            try:
                self.cache.put(image, fingerprint, self.embed(read_ct(path)))
                computed += 1
            except DrasclrError as exc:
                failed += 1
                logger.warning("embedding: %s skipped: %s", image, exc)
                datastore.update_image_info(image, {EMBEDDING_ERROR_KEY: {"image": fingerprint, "encoder": self.cache.encoder_key,
                                                                          "error": str(exc)}})
        return {"total": len(images), "computed": computed, "cached": cached, "failed": failed,
                "seconds": round(time.perf_counter() - start, 2)}
