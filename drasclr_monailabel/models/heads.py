"""Projection head of MoCo v2: the contrastive loss sees ``z = head(h)``, downstream tasks use ``h``."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """Linear(in -> hidden), ReLU, Linear(hidden -> out); not location-conditioned."""

    def __init__(self, in_dim: int = 128, hidden_dim: int = 128, out_dim: int = 128) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, out)
        return super().forward(h)
