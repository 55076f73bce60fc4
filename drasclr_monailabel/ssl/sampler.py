"""Batches of one landmark across many subjects, shuffled every epoch and split across ranks.

The sampler yields :class:`LandmarkBatch` keys (landmark, subjects); the dataset reads the whole
batch from such a key, so the landmark travels with every batch and any number of data-loader
workers serve the right one (the reference switched the landmark on the dataset object in the
main process, so workers kept serving a stale one). Use it as ``DataLoader(dataset,
sampler=sampler, batch_size=None)``.

Per epoch (seeded by ``seed`` and the epoch number, so every rank derives the same order):
the valid subjects of each landmark are shuffled and split into global batches of about
``batch_size x world_size`` (sizes differ by at most one; a landmark with fewer than
``min_batch x world_size`` valid subjects is left out, every other (landmark, subject) pair
comes exactly once), then all global batches are shuffled together. At every step all ranks
work on the same global batch, each on its own near-equal share of the subjects. So every step
is one landmark across all processes, as in the reference (4 GPUs, one landmark per step):
keys can be shuffled across ranks for BatchNorm (MoCo's shuffle-BN) without mixing landmarks,
every rank's keys go to one queue, and no rank needs padding batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class LandmarkBatch:
    """One batch key: a landmark index and the subject indices to read it from."""

    landmark: int
    subjects: tuple[int, ...]


class LandmarkBatchSampler(Sampler[LandmarkBatch]):
    """Yields this rank's :class:`LandmarkBatch` keys of one epoch, from ``start`` on.

    Args:
        valid: bool (S, L): subject s may be sampled at landmark l.
        batch_size: subjects per batch and rank (global batch: ``batch_size x world_size``).
        seed: base seed of the shuffles.
        rank: this process's rank.
        world_size: number of processes.
        min_batch: no rank gets fewer subjects in a batch (BatchNorm needs at least two).
    """

    def __init__(self, valid: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, min_batch: int = 2) -> None:
        if valid.ndim != 2:
            raise ValueError(f"valid must be (subjects, landmarks), got shape {valid.shape}")
        if batch_size < min_batch:
            raise ValueError(f"batch_size {batch_size} is below min_batch {min_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0 .. {world_size - 1}")
        self.valid = np.asarray(valid, dtype=bool)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.min_batch = min_batch
        self._parts = [_count_parts(int(n), batch_size * world_size, min_batch * world_size) for n in self.valid.sum(axis=0)]
        self.batches_per_epoch = sum(self._parts)
        if self.batches_per_epoch == 0:
            raise ValueError(f"no landmark has {min_batch * world_size} or more valid subjects to form a batch "
                             f"({min_batch} for each of {world_size} process(es))")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the first batch (of this rank) to yield, for resuming."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start {start} is outside 0 .. {self.batches_per_epoch}")
        self.epoch = epoch
        self.start = start

    @property
    def keys_per_landmark_epoch(self) -> np.ndarray:
        """int64 (L,): subjects drawn at each landmark per epoch (0 where no batch forms)."""
        return np.where(np.asarray(self._parts) > 0, self.valid.sum(axis=0), 0)

    def epoch_batches(self, epoch: int) -> list[LandmarkBatch]:
        """The global batches of ``epoch`` (every rank's subjects), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[LandmarkBatch] = []
        for landmark, parts in enumerate(self._parts):
            if parts == 0:
                continue
            subjects = rng.permutation(np.flatnonzero(self.valid[:, landmark]))
            batches.extend(LandmarkBatch(landmark, tuple(int(s) for s in part)) for part in np.array_split(subjects, parts))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def rank_batches(self, epoch: int) -> list[LandmarkBatch]:
        """This rank's share of each global batch of ``epoch``."""
        return [rank_share(batch, self.rank, self.world_size) for batch in self.epoch_batches(epoch)]

    def __iter__(self) -> Iterator[LandmarkBatch]:
        yield from self.rank_batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def rank_share(batch: LandmarkBatch, rank: int, world_size: int) -> LandmarkBatch:
    """Rank ``rank``'s near-equal part of a global batch (parts in rank order make up the batch)."""
    return LandmarkBatch(batch.landmark, tuple(int(s) for s in np.array_split(np.asarray(batch.subjects), world_size)[rank]))


def _count_parts(n: int, batch_size: int, min_batch: int) -> int:
    """Number of near-equal batches for ``n`` subjects: ceil(n / B), fewer if a part would fall below ``min_batch``."""
    if n < min_batch:
        return 0
    parts = math.ceil(n / batch_size)
    return parts if n // parts >= min_batch else n // min_batch


def mixed_landmark_batches(valid: np.ndarray, samples: int, batch_size: int, per_landmark: int,
                           seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches for precise BN: ``(subjects (n,), landmarks (G,))`` with ``n = G x p`` subjects, the
    ``p`` of landmark ``g`` at rows ``g p .. g p + p - 1`` (the grouped-convolution layout).

    ``p`` is ``per_landmark`` (fewer when no landmark has that many valid subjects) and ``G`` is
    ``batch_size // p`` (at least 2 when p = 1). Landmarks come in a shuffled order and each
    landmark's subjects in a shuffled order, both restarting when used up, so ``samples`` patches
    (at most the number of valid pairs) spread over landmarks and subjects as evenly as they can.
    """
    counts = valid.sum(axis=0)
    per = int(min(per_landmark, counts.max(initial=0)))
    eligible = np.flatnonzero(counts >= per) if per > 0 else np.zeros(0, dtype=np.int64)
    samples = min(samples, int(counts[eligible].sum()))
    groups = min(max(batch_size // max(per, 1), 2 if per == 1 else 1), len(eligible))
    if samples == 0 or groups * per < 2:
        return []
    rng = np.random.default_rng([seed, 1])
    landmark_order: list[int] = []
    subject_orders: dict[int, list[int]] = {}
    batches = []
    for _ in range(-(-samples // (groups * per))):
        landmarks: list[int] = []
        while len(landmarks) < groups:
            if not landmark_order:
                landmark_order = [int(l) for l in rng.permutation(eligible) if l not in landmarks]
            landmarks.append(landmark_order.pop())
        subjects = []
        for landmark in landmarks:
            order = subject_orders.setdefault(landmark, [])
            if len(order) < per:
                order[:0] = [int(v) for v in rng.permutation(np.flatnonzero(valid[:, landmark])) if v not in order]
            subjects.extend(order.pop() for _ in range(per))
        batches.append((np.asarray(subjects, dtype=np.int64), np.asarray(landmarks, dtype=np.int64)))
    return batches
