"""The volume transformer: slice tokens in, contextual slice tokens and a volume embedding out.

Input: S slice tokens (B, S, d) in slice order (inferior to superior) and each slice's position
in [-1, 1]: the normalised atlas z where the scan was registered to the atlas (the same anatomy
gets the same value in every subject), else the relative position within the sampled stack. A
learned "kind" embedding tells the two apart, since they are not on the same scale.

Layers are pre-norm Transformer blocks whose attention is :class:`DeformableAttention1d` along the
slice axis; a learned mask token can replace chosen input tokens (masked slice prediction). The
volume embedding is the mean of the output tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from drasclr_monailabel.models.deformable_attention import DeformableAttention1d

POSITION_RELATIVE = 0
POSITION_ATLAS = 1


@dataclass
class VolumeTransformerArchitecture:
    """Constructor arguments of :class:`VolumeTransformer` besides the token size.

    Attributes:
        depth: Transformer blocks.
        heads: attention heads per block.
        points: sampling points per head and query.
        mlp_ratio: hidden size of each block's MLP relative to d.
        dropout: dropout after attention and MLP (training only).
        position_frequencies: sinusoid pairs encoding the slice position.
    """

    depth: int = 4
    heads: int = 8
    points: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    position_frequencies: int = 16

    def __post_init__(self) -> None:
        if min(self.depth, self.heads, self.points, self.position_frequencies) < 1 or self.mlp_ratio <= 0:
            raise ValueError("depth, heads, points and position_frequencies must be at least 1, mlp_ratio positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class SlicePositionEncoding(nn.Module):
    """Slice position p in [-1, 1] and its kind (relative / atlas) -> (B, S, d) added to the tokens.

    Sinusoids at wavelengths from 4 (the whole range twice) down to about one slice of a 64-slice
    stack, then a linear map; plus one learned vector per kind.
    """

    def __init__(self, dim: int, frequencies: int) -> None:
        super().__init__()
        scales = math.pi * torch.logspace(0, math.log10(64.0), frequencies)
        self.register_buffer("scales", scales, persistent=False)
        self.project = nn.Linear(2 * frequencies, dim)
        self.kind = nn.Embedding(2, dim)
        nn.init.normal_(self.kind.weight, std=0.02)

    def forward(self, positions: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """``positions`` (B, S) float, ``kinds`` (B,) int (0 relative, 1 atlas) -> (B, S, d)."""
        angles = positions.float().unsqueeze(-1) * self.scales
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.project(features.to(self.project.weight.dtype)) + self.kind(kinds).unsqueeze(1)


class VolumeTransformerBlock(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, architecture: VolumeTransformerArchitecture) -> None:
        super().__init__()
        hidden = int(dim * architecture.mlp_ratio)
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = DeformableAttention1d(dim, architecture.heads, architecture.points)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(architecture.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class VolumeTransformer(nn.Module):
    """(B, S, d) slice tokens + positions -> (B, S, d) contextual tokens."""

    def __init__(self, dim: int, architecture: VolumeTransformerArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        self.position = SlicePositionEncoding(dim, architecture.position_frequencies)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(VolumeTransformerBlock(dim, architecture) for _ in range(architecture.depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, kinds: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextualise ``tokens`` (B, S, d).

        Args:
            positions: (B, S) slice positions in [-1, 1].
            kinds: (B,) position kind per volume (:data:`POSITION_RELATIVE` / :data:`POSITION_ATLAS`).
            mask: optional bool (B, S): tokens replaced by the mask token before the first block
                (their positions are kept, so the model knows where the missing slice is).
        """
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        x = tokens + self.position(positions, kinds).to(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
