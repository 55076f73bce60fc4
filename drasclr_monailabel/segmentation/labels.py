"""Label sets of the emphysema model and the mapping from stored label maps to class indices.

Stored label maps (the synthetic cohort, annotators' labels in the datastore) use the project's
values: 0 background, 1 centrilobular, 2 panlobular, 3 paraseptal (docs/formats.md). A model
either predicts binary emphysema (``("emphysema",)``: any non-zero value is class 1) or the three
subtypes (class index = stored value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUBTYPES = ("centrilobular", "panlobular", "paraseptal")
BINARY = ("emphysema",)


@dataclass(frozen=True)
class LabelSet:
    """Foreground class names in class-index order (index 0 is always background)."""

    names: tuple[str, ...] = BINARY

    def __post_init__(self) -> None:
        if self.names not in (BINARY, SUBTYPES):
            raise ValueError(f"labels must be {list(BINARY)} or {list(SUBTYPES)}, got {list(self.names)}")

    @property
    def num_classes(self) -> int:
        """Output channels including background."""
        return len(self.names) + 1

    @property
    def is_binary(self) -> bool:
        return self.names == BINARY

    def as_dict(self) -> dict[str, int]:
        """``{name: value}`` as MONAI Label's ``labels`` expects (background omitted)."""
        return {name: index + 1 for index, name in enumerate(self.names)}

    def to_classes(self, stored: np.ndarray) -> np.ndarray:
        """Stored label values -> class indices (uint8), refusing values outside 0-3."""
        values = np.unique(stored)
        bad = values[(values < 0) | (values > len(SUBTYPES))]
        if bad.size:
            raise ValueError(f"label values {bad.tolist()} are not in 0-{len(SUBTYPES)} (0 background, 1-3 subtypes)")
        if self.is_binary:
            return (stored > 0).astype(np.uint8)
        return stored.astype(np.uint8)
