"""MoCo v2 parts: per-landmark negative queues, InfoNCE and the momentum (key) encoder update."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class LandmarkQueues(nn.Module):
    """One FIFO queue of ``size`` L2-normalised keys per landmark, ring buffers in a (L, K, D) tensor.

    Memory: L x K x D x (4 bytes fp32 | 2 bytes fp16); 581 x 4096 x 128 x 4 B = 1.14 GiB.
    The keys are a buffer (they move with ``.to(device)`` and save with ``state_dict``); the
    write positions are plain Python integers kept in the state dict's extra state, so enqueueing
    never waits for the GPU. Starts with random unit vectors (as MoCo does) until real keys
    replace them.

    Args:
        n_landmarks: L.
        size: K, keys per landmark.
        dim: D, key length.
        dtype: storage type (float16 halves the memory; keys are unit vectors, whose fp16
            rounding, about 1e-3, is far below what InfoNCE at temperature 0.2 resolves).
        generator: for the random initial keys.
    """

    def __init__(self, n_landmarks: int, size: int, dim: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> None:
        super().__init__()
        initial = F.normalize(torch.randn(n_landmarks, size, dim, generator=generator), dim=2)
        self.register_buffer("keys", initial.to(dtype))
        self.pointers = [0] * n_landmarks

    @property
    def size(self) -> int:
        return int(self.keys.shape[1])

    def negatives(self, landmark: int) -> torch.Tensor:
        """The queue of ``landmark`` as (K, D) in float32 (a copy; later enqueues do not change it)."""
        return self.keys[landmark].float()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, landmarks: list[int]) -> None:
        """Append ``keys`` (M, D) to the queues of ``landmarks`` (M ints), oldest keys dropped first.

        Rows go in order, so keys gathered from several ranks in rank order land in the same
        slots on every rank. If more than K keys arrive for one landmark, the last K are kept.
        """
        keys = keys.detach().to(self.keys.dtype)
        for landmark in dict.fromkeys(landmarks):
            rows = [i for i, value in enumerate(landmarks) if value == landmark][-self.size :]
            block = keys[rows[0] : rows[-1] + 1] if rows == list(range(rows[0], rows[-1] + 1)) else keys[rows]
            start = self.pointers[landmark]
            head = min(len(rows), self.size - start)
            self.keys[landmark, start : start + head] = block[:head]
            self.keys[landmark, : len(rows) - head] = block[head:]
            self.pointers[landmark] = (start + len(rows)) % self.size

    def get_extra_state(self) -> dict:
        return {"pointers": list(self.pointers)}

    def set_extra_state(self, state: dict) -> None:
        self.pointers = [int(p) for p in state["pointers"]]


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample InfoNCE loss, (N,).

    ``-log( exp(a.p / t) / (exp(a.p / t) + sum_k exp(a.n_k / t)) )`` with anchors (N, D),
    positives (N, D) and shared negatives (K, D). Vectors are used as given (not re-normalised):
    the DrasCLR neighbour anchor is a sum of unit vectors.
    """
    positive_logit = (anchor * positive).sum(dim=1, keepdim=True)
    negative_logits = anchor @ negatives.to(anchor.dtype).t()
    logits = torch.cat([positive_logit, negative_logits], dim=1).float() / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


@torch.no_grad()
def momentum_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * source``, parameter by parameter."""
    target, source = list(target), list(source)
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, source, alpha=1.0 - momentum)
