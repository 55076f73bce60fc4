"""Overlap metrics shared by tests, benchmarks and reports."""

from __future__ import annotations

import numpy as np


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape; 1.0 when both are empty."""
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} and {truth.shape}")
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * float(np.count_nonzero(predicted & truth)) / total
