"""Patient-level pooling of landmark embeddings: mean, or a parameter-free attention.

**mean** - the average over the landmarks that have an embedding (DrasCLR's predecessor work).
Every landmark counts the same, so a disease that touches a tenth of the lung moves the vector by
about a tenth of its local effect.

**attention** - a deterministic softmax weighting that needs no training: each landmark is
weighted by how atypical the patient's embedding is *for that anatomical place*. DrasCLR gives every
patient the same landmarks, so the cohort defines, per landmark i, a reference: the mean embedding
``mu_i`` and the root-mean-square distance ``rms_i`` of the cohort's embeddings from it. The
deviation of patient p is ``d_pi = |h_pi - mu_i| / rms_i`` (about 1 for a typical patch) and
``w_pi = softmax_i(d_pi / temperature)`` over the patient's embedded landmarks. With temperature
0.5 a landmark twice as far from its reference as usual gets e^2 = 7.4 times the weight of a
typical one. Focal disease (emphysema is patchy) then dominates the vector instead of being
averaged away by normal lung, while anatomy-driven differences between places cancel because each
place is compared with itself. The reference uses no labels, but it does depend on the embedded
cohort (transductive): store it (``reference_mean``, ``reference_rms`` in ``embeddings.npz``) to pool
new scans the same way. A landmark with fewer than two embedded scans has no reference and
deviation 1.

A pooling learned from labels (e.g. attention-based multiple-instance learning) would belong to
the probe, trained inside its folds, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

ATTENTION_TEMPERATURE = 0.5

LandmarkSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def mean_pool(landmarks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 (D,) mean of ``landmarks`` (L, D) over rows where ``valid`` (L,) is True."""
    return landmarks[valid].mean(axis=0).astype(np.float32)


@dataclass(frozen=True)
class LandmarkReference:
    """Per-landmark reference of a cohort: ``mean`` float32 (L, D), ``rms`` float32 (L,) (NaN
    where fewer than two scans have that landmark)."""

    mean: np.ndarray
    rms: np.ndarray


def landmark_reference(scans: LandmarkSource) -> LandmarkReference:
    """Fit the reference in two streaming passes over ``scans()``, which yields
    ``(landmarks (L, D), valid (L,))`` per scan (so a large cohort never sits in memory at once)."""
    total, count = None, None
    for landmarks, valid in scans():
        if total is None:
            total, count = np.zeros(landmarks.shape, dtype=np.float64), np.zeros(len(valid), dtype=np.int64)
        total[valid] += landmarks[valid]
        count += valid
    if total is None:
        raise ValueError("no scans to fit the landmark reference on")
    mean = total / np.maximum(count, 1)[:, None]
    squared = np.zeros(len(count))
    for landmarks, valid in scans():
        squared[valid] += np.sum((landmarks[valid] - mean[valid]) ** 2, axis=1)
    rms = np.where(count >= 2, np.sqrt(squared / np.maximum(count, 1)), np.nan)
    return LandmarkReference(mean.astype(np.float32), rms.astype(np.float32))


def attention_weights(landmarks: np.ndarray, valid: np.ndarray, reference: LandmarkReference,
                      temperature: float = ATTENTION_TEMPERATURE) -> np.ndarray:
    """float32 (L,) softmax weights over the valid landmarks (0 elsewhere), see the module docstring."""
    rows = np.flatnonzero(valid)
    distance = np.linalg.norm(landmarks[rows] - reference.mean[rows], axis=1)
    scale = reference.rms[rows]
    usable = np.isfinite(scale) & (scale > 0)
    deviation = np.ones(len(rows))
    deviation[usable] = distance[usable] / scale[usable]
    logits = deviation / temperature
    weights = np.exp(logits - logits.max())
    out = np.zeros(len(valid), dtype=np.float32)
    out[rows] = weights / weights.sum()
    return out


def attention_pool(landmarks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float32 (D,) weighted sum of the embedded landmarks (rows with weight 0 are skipped)."""
    rows = weights > 0
    return (weights[rows] @ landmarks[rows]).astype(np.float32)
