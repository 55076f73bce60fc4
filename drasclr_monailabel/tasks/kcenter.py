"""k-center greedy selection over embeddings (Sener and Savarese, ICLR 2018, "core-set").

Labelling the scan farthest from everything already labelled covers the cohort with the fewest
labels: after k picks, every scan lies within the smallest achievable radius (up to a factor of 2)
of a labelled one. Embeddings are L2-normalised first, so the distance is a monotone function of
the cosine similarity and does not depend on the embeddings' scale.
"""

from __future__ import annotations

import numpy as np


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, (N, D)); zero rows stay zero."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def min_distances(candidates: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Euclidean distance of each candidate (N, D) to its nearest anchor (M, D); +inf when M = 0."""
    if len(anchors) == 0:
        return np.full(len(candidates), np.inf, dtype=np.float32)
    squared = (np.einsum("nd,nd->n", candidates, candidates)[:, None] - 2.0 * candidates @ anchors.T
               + np.einsum("md,md->m", anchors, anchors)[None, :])
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def k_center_greedy(candidates: np.ndarray, anchors: np.ndarray, k: int = 1) -> tuple[list[int], np.ndarray]:
    """Pick ``k`` candidates, each the one farthest from the anchors and the earlier picks.

    Args:
        candidates: (N, D) embeddings of unlabelled scans.
        anchors: (M, D) embeddings of labelled scans (M may be 0).
        k: how many to pick (at most N).

    Returns:
        ``(picks, distances)``: candidate indices in pick order, and each candidate's distance to
        its nearest anchor before any pick (the diversity of each scan; +inf when M = 0). With no
        anchors the first pick is the candidate nearest the candidates' mean: the most typical
        scan, the best single representative of the cohort.
    """
    x = normalise(candidates)
    a = normalise(anchors) if len(anchors) else np.zeros((0, x.shape[1]), dtype=np.float32)
    initial = min_distances(x, a)
    current = initial.copy()
    picks: list[int] = []
    for _ in range(min(k, len(x))):
        if np.all(np.isinf(current)):
            pick = int(np.argmin(min_distances(x, x.mean(axis=0, keepdims=True))))
        else:
            pick = int(np.argmax(current))
        picks.append(pick)
        current = np.minimum(current, min_distances(x, x[pick : pick + 1]))
        current[pick] = -1.0
    return picks, initial
