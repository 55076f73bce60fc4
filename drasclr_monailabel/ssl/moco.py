"""MoCo v2 parts: per-landmark negative queues that know which slots hold real keys and whose
subject each key came from, masked InfoNCE, and the momentum (key) encoder update."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

EMPTY_SLOT = -1


class LandmarkQueues(nn.Module):
    """One FIFO queue of ``size`` L2-normalised keys per landmark, ring buffers in a (L, K, D) tensor.

    Every slot also holds the subject index its key came from (``subjects`` (L, K), int64), or
    :data:`EMPTY_SLOT` while nothing has been written there. Queues start empty: a slot becomes
    a negative only once a real key is in it (random initial vectors, as MoCo's single queue
    starts with, would be the only negatives for most of a small run: one queue per landmark
    fills L times slower than MoCo's one queue).

    Memory: L x K x (D x 4 bytes fp32 | 2 bytes fp16 + 8 bytes id); 581 x 4096 x 128 x 4 B =
    1.14 GiB for the keys, 19 MB for the ids. The keys and ids are buffers (they move with
    ``.to(device)`` and save with ``state_dict``); the write positions are plain Python integers
    kept in the state dict's extra state, so enqueueing never waits for the GPU.

    Args:
        n_landmarks: L.
        size: K, keys per landmark.
        dim: D, key length.
        dtype: key storage type (float16 halves the memory; keys are unit vectors, whose fp16
            rounding, about 1e-3, is far below what InfoNCE at temperature 0.2 resolves).
    """

    def __init__(self, n_landmarks: int, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(n_landmarks, size, dim, dtype=dtype))
        self.register_buffer("subjects", torch.full((n_landmarks, size), EMPTY_SLOT, dtype=torch.int64))
        self.pointers = [0] * n_landmarks

    @property
    def size(self) -> int:
        return int(self.keys.shape[1])

    def negatives(self, landmark: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The written slots of ``landmark``'s queue: keys (n, D) float32 and their subjects (n,).

        Copies: later enqueues do not change them. ``n`` is 0 until a key arrives.
        """
        written = self.subjects[landmark] != EMPTY_SLOT
        return self.keys[landmark][written].float(), self.subjects[landmark][written].clone()

    def sample_others(self, landmark: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """Up to ``count`` written keys of the other landmarks' queues, drawn without replacement:
        (n, D) float32 (all of them when fewer are written)."""
        written = self.subjects != EMPTY_SLOT
        written[landmark] = False
        slots = written.flatten().nonzero().squeeze(1)
        if len(slots) > count:
            slots = slots[torch.randperm(len(slots), generator=generator, device=generator.device)[:count].to(slots.device)]
        return self.keys.flatten(0, 1)[slots].float()

    def fill(self) -> torch.Tensor:
        """Share of written slots per landmark, (L,) float in [0, 1]."""
        return (self.subjects != EMPTY_SLOT).float().mean(dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, landmarks: list[int], subjects: torch.Tensor) -> None:
        """Append ``keys`` (M, D) of ``subjects`` (M,) to the queues of ``landmarks`` (M ints),
        oldest keys dropped first.

        Rows go in order, so keys gathered from several ranks in rank order land in the same
        slots on every rank. If more than K keys arrive for one landmark, the last K are kept.
        """
        if keys.shape[0] != len(landmarks) or subjects.shape[0] != len(landmarks):
            raise ValueError(f"{keys.shape[0]} keys, {subjects.shape[0]} subjects and {len(landmarks)} landmarks must match")
        keys = keys.detach().to(self.keys.dtype)
        subjects = subjects.to(self.subjects.device, torch.int64)
        if bool((subjects < 0).any()):
            raise ValueError("subject indices must not be negative")
        for landmark in dict.fromkeys(landmarks):
            rows = torch.tensor([i for i, value in enumerate(landmarks) if value == landmark][-self.size :], device=keys.device)
            count = len(rows)
            start = self.pointers[landmark]
            slots = (torch.arange(count, device=keys.device) + start) % self.size
            self.keys[landmark, slots] = keys[rows]
            self.subjects[landmark, slots] = subjects[rows.to(subjects.device)]
            self.pointers[landmark] = (start + count) % self.size

    def get_extra_state(self) -> dict:
        return {"pointers": list(self.pointers)}

    def set_extra_state(self, state: dict) -> None:
        self.pointers = [int(p) for p in state["pointers"]]


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample InfoNCE loss, (N,).

    ``-log( exp(a.p / t) / (exp(a.p / t) + sum_k exp(a.n_k / t)) )`` with anchors (N, D),
    positives (N, D) and negatives (K, D) shared by all anchors, except where ``excluded``
    (bool (N, K)) is true: that negative does not count for that anchor (e.g. a key of the
    anchor's own subject). With no negative left the loss is 0. Vectors are used as given (not
    re-normalised): the DrasCLR neighbour anchor is a sum of unit vectors.
    """
    positive_logit = (anchor * positive).sum(dim=1, keepdim=True)
    negative_logits = anchor @ negatives.to(anchor.dtype).t()
    logits = torch.cat([positive_logit, negative_logits], dim=1).float() / temperature
    if excluded is not None:
        mask = torch.cat([excluded.new_zeros((excluded.shape[0], 1)), excluded], dim=1)
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def same_subject(anchor_subjects: torch.Tensor, negative_subjects: torch.Tensor) -> torch.Tensor:
    """bool (N, K): negative k came from anchor n's subject (a false negative to exclude)."""
    return anchor_subjects.to(negative_subjects.device)[:, None] == negative_subjects[None, :]


@torch.no_grad()
def momentum_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * source``, parameter by parameter."""
    target, source = list(target), list(source)
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, source, alpha=1.0 - momentum)
