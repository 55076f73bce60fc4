"""The emphysema threshold that spares the annotator most: chosen on the labelled scans.

The fine-tuned model's pre-segmentation is what an annotator corrects, voxel by voxel. Cut at
an emphysema probability of 0.5 it over-segments (it is trained on patches of which half are
centred on emphysema and with a Dice term, both of which favour the foreground): in the annotation
loop benchmark its false positives inside the lungs were 5-6 times ``emphysema_laa``'s
(docs/benchmarks.md). After a training round the app cuts instead at the candidate threshold that
changes the fewest voxels of the labelled scans' own labels, estimated on a few inference windows
centred on lung voxels of each labelled scan (:mod:`.lung_windows`; a whole-scan prediction per
labelled scan would cost more than the round's training on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from drasclr_monailabel.segmentation.case import PreparedCase
from drasclr_monailabel.segmentation.inference import EMPHYSEMA_THRESHOLD, WINDOW
from drasclr_monailabel.segmentation.lung_windows import lung_windows, stable_seed
from drasclr_monailabel.segmentation.precision import network_precision

CANDIDATES = tuple(round(0.30 + 0.05 * step, 2) for step in range(14))
"""Thresholds tried: 0.30, 0.35, ..., 0.95."""


def changed_voxels(emphysema: np.ndarray, truth: np.ndarray, lung: np.ndarray,
                   candidates: Sequence[float] = CANDIDATES) -> np.ndarray:
    """Voxels an annotator changes in the lung at each candidate threshold: int64 (len(candidates),).

    Args:
        emphysema: float emphysema probabilities (one minus background's), any shape.
        truth: bool true emphysema, same shape.
        lung: bool lung mask, same shape (outside it the app predicts background).
    """
    inside, true_inside = emphysema[lung], truth[lung]
    return np.array([np.count_nonzero((inside > t) != true_inside) for t in candidates], dtype=np.int64)


def best_threshold(changed: np.ndarray, candidates: Sequence[float] = CANDIDATES) -> float:
    """The candidate with the fewest changed voxels; among equals the one nearest to the default 0.5
    (no evidence, no move)."""
    ties = np.flatnonzero(changed == changed.min())
    return float(min((candidates[i] for i in ties), key=lambda t: (round(abs(t - EMPHYSEMA_THRESHOLD), 6), t)))


def choose_threshold(model: torch.nn.Module, cases: Sequence[PreparedCase], device: str | torch.device,
                     precision: torch.dtype = torch.float32, windows: int = 8,
                     candidates: Sequence[float] = CANDIDATES) -> dict[str, Any]:
    """The threshold with the fewest changed voxels over ``windows`` lung windows of each labelled case.

    Args:
        model: the fine-tuned network (its mode is restored afterwards).
        cases: prepared cases with labels on their 1 mm grid; the same windows for a case every
            round (seeded by its id).
        device: where the windows run.
        precision: the network's number format at inference (:mod:`.precision`).
        windows: 64^3 windows per case.

    Returns:
        ``{"threshold": t, "changed_voxels": {str(t): voxels summed over the windows},
        "windows": windows measured}``.

    Raises:
        ValueError: a case without labels.
    """
    if any(case.labels is None for case in cases):
        raise ValueError("choosing a threshold needs labelled cases")
    total = np.zeros(len(candidates), dtype=np.int64)
    measured = 0
    was_training = model.training
    model.eval()
    try:
        for case in cases:
            sample = lung_windows(case, windows, model.divisor, seed=stable_seed(case.case_id), edge=WINDOW)
            with torch.no_grad(), network_precision(precision, device):
                logits = model(torch.from_numpy(sample.inputs).to(device))
            emphysema = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0].cpu().numpy()
            total += changed_voxels(emphysema, sample.labels > 0, sample.lung, candidates)
            measured += len(sample.inputs)
    finally:
        model.train(was_training)
    return {"threshold": best_threshold(total, candidates),
            "changed_voxels": {f"{t:.2f}": int(n) for t, n in zip(candidates, total)}, "windows": measured}
