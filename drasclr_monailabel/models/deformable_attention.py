"""Deformable attention along the slice axis of a volume (1D version of Deformable DETR's attention).

Tokens are the S slice embeddings of a volume, in slice order. For the query token of slice i,
each head h looks at P points around the reference point i, at ``i + offset[h, p]`` slices, where
the offsets and the mixing weights are predicted from the query itself:

    offset = Linear(x_i)            (B, S, H, P), in slices
    weight = softmax_p(Linear(x_i)) (B, S, H, P)
    out_i  = W_o concat_h sum_p weight[h, p] * V_h(i + offset[h, p])

``V_h(t)`` is the value sequence of head h read at the fractional slice position t by linear
interpolation between the two nearest slices (zero outside the volume). Because the sampling
position is a differentiable function of the offset, the offsets are learned; because every point
is read relative to its own query's slice, different slices read different places (the public
reference implementation attended over feature indices and its sampling collapsed to a constant).

Offsets start as a fixed spread (weights zero, bias set): head pairs look forwards and backwards
at dilations 1, 2, 4, ... slices, so four layers of 8 heads x 4 points already see about 64
slices before any training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeformableAttention1d(nn.Module):
    """Multi-head deformable attention over a sequence of slice tokens.

    Args:
        dim: token size D (divisible by ``heads``).
        heads: attention heads H.
        points: sampling points P per head and query.
    """

    def __init__(self, dim: int, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if points < 1:
            raise ValueError(f"points must be at least 1, got {points}")
        self.dim, self.heads, self.points = dim, heads, points
        self.offsets = nn.Linear(dim, heads * points)
        self.weights = nn.Linear(dim, heads * points)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offsets.weight)
        with torch.no_grad():
            self.offsets.bias.copy_(initial_offsets(self.heads, self.points).flatten())
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        nn.init.xavier_uniform_(self.value.weight)
        nn.init.zeros_(self.value.bias)
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def sampling_positions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, D) queries -> (B, S, H, P) fractional slice positions they read."""
        b, s, _ = x.shape
        reference = torch.arange(s, device=x.device, dtype=x.dtype).view(1, s, 1, 1)
        return reference + self.offsets(x).view(b, s, self.heads, self.points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, D) tokens -> (B, S, D)."""
        b, s, d = x.shape
        positions = self.sampling_positions(x)
        weights = F.softmax(self.weights(x).view(b, s, self.heads, self.points), dim=-1)
        values = self.value(x).view(b, s, self.heads, d // self.heads).permute(0, 2, 1, 3)  # (B, H, S, Dh)
        sampled = sample_along_slices(values, positions.permute(0, 2, 1, 3))  # (B, H, S, P, Dh)
        mixed = (sampled * weights.permute(0, 2, 1, 3).unsqueeze(-1)).sum(dim=3)  # (B, H, S, Dh)
        return self.output(mixed.permute(0, 2, 1, 3).reshape(b, s, d))


def sample_along_slices(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Read ``values`` (B, H, S, Dh) at fractional slice ``positions`` (B, H, Q, P) -> (B, H, Q, P, Dh).

    Linear interpolation between the slices either side; a neighbour outside 0 .. S-1 counts as
    zero, so a point beyond the volume fades out instead of repeating the edge slice. Done with
    ``grid_sample`` on a one-pixel-high image (one fused kernel, gradients to the positions).
    """
    b, h, s, dh = values.shape
    q, p = positions.shape[2], positions.shape[3]
    image = values.reshape(b * h, s, dh).transpose(1, 2).unsqueeze(2)  # (BH, Dh, 1, S)
    x = positions.reshape(b * h, q, p).to(image.dtype) / max(s - 1, 1) * 2 - 1
    grid = torch.stack([x, torch.zeros_like(x)], dim=-1)  # (BH, Q, P, 2): (x, y) in [-1, 1]
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (BH, Dh, Q, P)
    return sampled.permute(0, 2, 3, 1).reshape(b, h, q, p, dh)


def initial_offsets(heads: int, points: int) -> torch.Tensor:
    """(H, P) starting offsets in slices: head 2k looks forward, head 2k+1 backward, at
    dilation 2^k: points at +-(1, 2, ..., P) x 2^k slices."""
    offsets = torch.empty(heads, points)
    steps = torch.arange(1, points + 1, dtype=torch.float32)
    for head in range(heads):
        direction = 1.0 if head % 2 == 0 else -1.0
        offsets[head] = direction * steps * 2 ** (head // 2)
    return offsets
