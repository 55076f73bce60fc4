"""Feature queue for SwAV's Sinkhorn step with small batches (Caron et al., 2020, small-batch setting).

Sinkhorn-Knopp gives every prototype the same share of the mass of the rows it sees. With n rows
and K prototypes each row's code must therefore cover at least K / n prototypes: 8 volume views
against 300 prototypes can only give near-uniform targets. Adding the projections of recent
batches as extra rows (their scores recomputed with the current prototypes, their codes thrown
away) lets the codes of the batch be sharp.

Every process holds the same queue: each step appends the projections of all processes (gathered
in rank order), so a checkpoint of rank 0 restores every rank exactly. In the Sinkhorn step, whose
sums run over all processes, each process adds only its share of the rows (every
``world_size``-th, from its rank), so every queued row counts once.
"""

from __future__ import annotations

from typing import Any

import torch

from drasclr_monailabel.ssl.distributed import DistContext


class FeatureQueue:
    """The last ``size`` unit projections (P-dim) appended, newest first; unwritten rows are never used.

    Attributes:
        rows: float (size, P) storage.
        count: rows written so far (at most ``size``).
    """

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.rows = torch.zeros(size, dim, device=device)
        self.count = 0

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def push(self, projections: torch.Tensor) -> None:
        """Append ``projections`` (n, P) (detached); the oldest rows drop out."""
        if self.size == 0:
            return
        new = projections.detach().float()[: self.size]
        self.rows = torch.cat([new, self.rows[: self.size - new.shape[0]]])
        self.count = min(self.size, self.count + new.shape[0])

    def share(self, context: DistContext | None = None) -> torch.Tensor:
        """The written rows this process contributes to a Sinkhorn step: (m, P)."""
        written = self.rows[: self.count]
        if context is None or not context.distributed:
            return written
        return written[context.rank :: context.world_size]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"].to(self.rows.device)
        self.count = int(state["count"])
