"""Inference-sized windows centred on random lung voxels of a prepared case.

What needs the network's view of a scan without a whole-scan prediction (minutes per pass on a
CPU) estimates it on a few such windows: MC-dropout uncertainty for the ``epistemic`` strategy,
and the emphysema threshold chosen on the labelled scans (:mod:`.threshold`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from drasclr_monailabel.segmentation.case import PreparedCase, network_window


@dataclass(frozen=True)
class LungWindows:
    """Windows of one case on its 1 mm grid.

    Attributes:
        inputs: float32 (N, C, d, h, w) network input (CT and atlas coordinates).
        lung: bool (N, d, h, w) lung mask.
        labels: uint8 (N, d, h, w) class labels, None when the case has none.
    """

    inputs: np.ndarray
    lung: np.ndarray
    labels: np.ndarray | None


def lung_windows(case: PreparedCase, count: int, divisor: int, seed: int, edge: int) -> LungWindows:
    """``count`` windows centred on random lung voxels (fewer when the lung has fewer voxels).

    Args:
        case: the prepared scan (network input, lung labels and any class labels on its 1 mm grid).
        divisor: window edges are multiples of this (the model's routing block); a grid axis shorter
            than ``edge`` gets the largest multiple that fits (at least ``divisor``, padded: the
            input's edge is replicated, no lung or label is added).
        seed: seeds the choice of centres (a fixed seed per scan keeps its windows the same across models).
        edge: cubic window edge (the inference window).
    """
    shape = np.asarray(case.lungs.shape)
    size = np.maximum(divisor, np.minimum(edge, (shape // divisor) * divisor))
    short = np.maximum(size - shape, 0)
    lungs, labels = case.lungs, case.labels
    if short.any():  # np.pad copies even with nothing to add: a whole-grid copy per scored scan
        pad = [(0, int(p)) for p in short]
        lungs = np.pad(lungs, pad)
        labels = None if labels is None else np.pad(labels, pad)
        shape = np.asarray(lungs.shape)
    points = np.argwhere(lungs > 0)
    if len(points) == 0:
        points = np.argwhere(np.ones_like(lungs, dtype=bool))
    rng = np.random.default_rng(seed)
    centres = points[rng.choice(len(points), size=min(count, len(points)), replace=False)]
    starts = np.clip(centres - size // 2, 0, shape - size)
    boxes = [tuple(slice(int(a), int(a + n)) for a, n in zip(start, size)) for start in starts]
    inputs = np.stack([network_window(case, *(np.arange(s.start, s.stop) for s in box)) for box in boxes])
    return LungWindows(inputs=inputs, lung=np.stack([lungs[box] > 0 for box in boxes]),
                       labels=None if labels is None else np.stack([labels[box] for box in boxes]))


def stable_seed(text: str) -> int:
    """A seed from ``text`` (a scan's path or id) that is the same in every process (``hash`` is not)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
