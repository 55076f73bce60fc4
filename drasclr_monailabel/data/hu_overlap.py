"""How far HU alone tells emphysema subtypes (and normal lung) apart: pooled HU histograms per class.

A density threshold can only split voxels by HU. If the subtypes' HU distributions overlap, no
threshold separates them; the best one's balanced accuracy (mean of the two classes' recalls)
measures it: 0.5 means HU carries no information about which class a voxel is, 1.0 means one
threshold splits them perfectly.
"""

from __future__ import annotations

import numpy as np

from drasclr_monailabel.data.lesions import SUBTYPE_NAMES

HU_LOW = -1100
HU_HIGH = 3100
NORMAL = "normal"


class HuHistograms:
    """1-HU-bin histograms of normal lung and of each subtype's labelled voxels, pooled over scans."""

    def __init__(self) -> None:
        self.counts: dict[str, np.ndarray] = {}

    def add(self, hu: np.ndarray, lungs: np.ndarray, label: np.ndarray) -> None:
        """Add one scan: ``hu``, ``lungs`` and ``label`` (0..3) are (Z, Y, X) on one grid."""
        inside = lungs > 0
        classes = {NORMAL: inside & (label == 0)}
        classes.update({name: inside & (label == value) for value, name in SUBTYPE_NAMES.items()})
        for name, mask in classes.items():
            values = np.clip(hu[mask].astype(np.int64), HU_LOW, HU_HIGH) - HU_LOW
            counts = np.bincount(values, minlength=HU_HIGH - HU_LOW + 1)
            self.counts[name] = self.counts.get(name, 0) + counts

    def present(self) -> list[str]:
        """Classes with at least one voxel, normal lung first."""
        return [name for name in (NORMAL, *SUBTYPE_NAMES.values()) if name in self.counts and self.counts[name].sum() > 0]

    def share_below(self, name: str, threshold_hu: float) -> float:
        """Share (0..1) of the class's voxels strictly below ``threshold_hu``."""
        counts = self.counts[name]
        below = int(np.ceil(threshold_hu)) - HU_LOW
        return float(counts[:max(below, 0)].sum() / max(counts.sum(), 1))

    def quantile(self, name: str, q: float) -> float:
        """The ``q`` quantile (0..1) of the class's HU."""
        cumulative = np.cumsum(self.counts[name]) / max(self.counts[name].sum(), 1)
        return float(np.searchsorted(cumulative, q) + HU_LOW)

    def best_threshold_accuracy(self, first: str, second: str) -> float:
        """Balanced accuracy of the single HU threshold that best separates two classes (0.5..1)."""
        a = np.cumsum(self.counts[first]) / max(self.counts[first].sum(), 1)
        b = np.cumsum(self.counts[second]) / max(self.counts[second].sum(), 1)
        # "first below t, second at or above t", or the other way round.
        accuracy = 0.5 * (a + 1.0 - b)
        return float(max(accuracy.max(), (1.0 - accuracy).max(), 0.5))
