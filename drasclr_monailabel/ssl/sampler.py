"""Batches of one landmark across many subjects, shuffled every epoch and sharded across ranks.

The sampler yields :class:`LandmarkBatch` keys (landmark, subjects); the dataset reads the whole
batch from such a key, so the landmark travels with every batch and any number of data-loader
workers serve the right one (the reference switched the landmark on the dataset object in the
main process, so workers kept serving a stale one). Use it as ``DataLoader(dataset,
sampler=sampler, batch_size=None)``.

Per epoch (seeded by ``seed`` and the epoch number, so every rank derives the same order):
the valid subjects of each landmark are shuffled and split into batches of ``batch_size``
(sizes differ by at most one; a landmark with fewer than ``min_batch`` valid subjects is
left out, every other (landmark, subject) pair comes exactly once), then all batches are shuffled together. Ranks take every
``world_size``-th batch; the list is first padded by repeating its head so that every rank runs
the same number of steps (as torch's DistributedSampler does).
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
        batch_size: subjects per batch (per rank).
        seed: base seed of the shuffles.
        rank: this process's rank.
        world_size: number of processes.
        min_batch: smaller batches are dropped (BatchNorm needs at least two samples).
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
        self._parts = [_count_parts(int(n), batch_size, min_batch) for n in self.valid.sum(axis=0)]
        total = sum(self._parts)
        if total == 0:
            raise ValueError(f"no landmark has {min_batch} or more valid subjects to form a batch")
        self.batches_per_epoch = math.ceil(total / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the first batch (of this rank) to yield, for resuming."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start {start} is outside 0 .. {self.batches_per_epoch}")
        self.epoch = epoch
        self.start = start

    def epoch_batches(self, epoch: int) -> list[LandmarkBatch]:
        """All batches of ``epoch`` for all ranks, in order (before sharding and padding)."""
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
        """This rank's batches of ``epoch``."""
        batches = self.epoch_batches(epoch)
        padded_length = self.batches_per_epoch * self.world_size
        padded = (batches * math.ceil(padded_length / len(batches)))[:padded_length]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[LandmarkBatch]:
        yield from self.rank_batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def _count_parts(n: int, batch_size: int, min_batch: int) -> int:
    """Number of near-equal batches for ``n`` subjects: ceil(n / B), fewer if a part would fall below ``min_batch``."""
    if n < min_batch:
        return 0
    parts = math.ceil(n / batch_size)
    return parts if n // parts >= min_batch else n // min_batch
