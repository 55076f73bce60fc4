"""Batches of 2D samples and volume views, keyed so that any worker serves them reproducibly.

2D samples ("items") are numbered: first the 2D images, then for each volume
``slices_per_volume`` items, item ``b`` being a slice from the b-th of that many equal z bins of the
volume's stack. An epoch is one pass over all items in a shuffled order.

A batch key (:class:`JointBatchKey`) names the items, the volumes whose two views the 3D losses
see (none in a stage without 3D losses), the epoch and the batch's number in the epoch. All
randomness of reading (the height within a bin, each view's z range) is drawn from generators
seeded by (seed, epoch, item or batch, volume), so the same key always gives the same tensors,
whichever worker reads it and whether or not the run was resumed in between. Random augmentation
happens later, on the device (:mod:`.augment`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from drasclr_monailabel.io.images2d import read_image2d
from drasclr_monailabel.ssl.joint2d3d.sources import VolumeEntry
from drasclr_monailabel.ssl.joint2d3d.stacks import SliceStack, StackStore, image_to_square


@dataclass(frozen=True)
class JointBatchKey:
    """One step's data: 2D item ids, volume ids (may be empty), the epoch and the batch number."""

    items: tuple[int, ...]
    volumes: tuple[int, ...]
    epoch: int
    batch: int


class JointDataset(Dataset):
    """``dataset[key]`` -> one batch of tensors (pixels float16 in [0, 1]).

    Keys of the returned dict:
        items (B, 1, N, N) float16, item_ids (B,) int64; and when the key names volumes:
        views (V, 2, S, N, N) float16, positions (V, 2, S) float32, kinds (V,) int64,
        volume_ids (V,) int64.

    Args:
        images: 2D image files (items 0 .. len(images) - 1).
        volumes: the volumes (their items follow the images).
        stacks: builds or reads the volumes' slice stacks; its settings' ``store_size`` is the
            square size N of every sample.
        slices_per_volume: items per volume.
        num_slices: S, slices per volume view.
        min_coverage: a view spans at least this fraction of the stack's z extent.
        seed: seeds the reading randomness.
        cache_items: stacks and images kept open in memory (least recently used dropped).
    """

    def __init__(self, images: list[Path], volumes: list[VolumeEntry], stacks: StackStore, slices_per_volume: int,
                 num_slices: int, min_coverage: float, seed: int, cache_items: int = 128) -> None:
        self.images = list(images)
        self.volumes = list(volumes)
        self.stacks = stacks
        self.slices_per_volume = slices_per_volume
        self.num_slices = num_slices
        self.min_coverage = min_coverage
        self.seed = seed
        self.cache_items = cache_items
        self._cache: OrderedDict[tuple[str, int], np.ndarray | SliceStack] = OrderedDict()

    @property
    def n_items(self) -> int:
        return len(self.images) + len(self.volumes) * self.slices_per_volume

    def __getitem__(self, key: JointBatchKey) -> dict[str, torch.Tensor]:
        items = np.stack([self.read_item(item, key.epoch) for item in key.items])
        batch = {"items": torch.from_numpy(items).unsqueeze(1), "item_ids": torch.tensor(key.items, dtype=torch.int64)}
        if key.volumes:
            views, positions, kinds = zip(*(self.read_views(volume, key.epoch, key.batch) for volume in key.volumes))
            batch.update(views=torch.from_numpy(np.stack(views)), positions=torch.from_numpy(np.stack(positions)),
                         kinds=torch.tensor(kinds, dtype=torch.int64), volume_ids=torch.tensor(key.volumes, dtype=torch.int64))
        return batch

    def read_item(self, item: int, epoch: int) -> np.ndarray:
        """2D item ``item`` as float16 (N, N); a volume item's height within its bin varies by epoch."""
        if item < len(self.images):
            return self._image(item)
        volume, bin_index = divmod(item - len(self.images), self.slices_per_volume)
        stack = self.stack(volume)
        jitter = np.random.default_rng([self.seed, epoch, item]).random()
        index = (bin_index + jitter) / self.slices_per_volume * (stack.pixels.shape[0] - 1)
        pixels, _ = stack.sample(np.array([index]))
        return pixels[0].astype(np.float16)

    def read_views(self, volume: int, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Two views of ``volume``: each S slices evenly spaced over a random z range covering at
        least ``min_coverage`` of the stack -> (float16 (2, S, N, N), float32 (2, S), kind)."""
        stack = self.stack(volume)
        rng = np.random.default_rng([self.seed, epoch, batch, volume])
        last = stack.pixels.shape[0] - 1
        views, positions = [], []
        for _ in range(2):
            span = rng.uniform(self.min_coverage, 1.0) * last
            start = rng.uniform(0.0, last - span)
            pixels, where = stack.sample(start + np.linspace(0.0, span, self.num_slices))
            views.append(pixels.astype(np.float16))
            positions.append(where)
        return np.stack(views), np.stack(positions), stack.kind

    def stack(self, volume: int) -> SliceStack:
        """The stack of volume ``volume`` (opened once, then kept while recently used)."""
        return self._cached(("volume", volume), lambda: self.stacks.get(self.volumes[volume]))

    def _image(self, index: int) -> np.ndarray:
        size = self.stacks.settings.store_size
        return self._cached(("image", index), lambda: image_to_square(read_image2d(self.images[index]).pixels, size))

    def _cached(self, key: tuple[str, int], load: Callable[[], np.ndarray | SliceStack]):
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = load()
        self._cache[key] = value
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        return value


class JointBatchSampler(Sampler[JointBatchKey]):
    """This rank's batch keys of one epoch, from ``start`` on (resumable mid-epoch).

    Per epoch (seeded by ``seed`` and the epoch, so every rank derives the same list): the items
    are shuffled and split into near-equal batches of at most ``batch_size`` (none below 2, for
    BatchNorm); the list is padded by repeating its head to a multiple of ``world_size`` and rank
    r takes batches r, r + world_size, ... For a batch at global step g with ``uses_volumes(g)``,
    ``volumes_per_batch`` distinct volumes are drawn at random.

    Args:
        n_items: 2D items in the dataset.
        n_volumes: volumes in the dataset.
        batch_size: items per batch.
        volumes_per_batch: volumes per batch (at most ``n_volumes``).
        uses_volumes: whether global step g (0-based) needs volume views.
    """

    def __init__(self, n_items: int, n_volumes: int, batch_size: int, volumes_per_batch: int, uses_volumes: Callable[[int], bool],
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n_items < 2:
            raise ValueError(f"at least 2 samples are needed to form a batch, got {n_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0 .. {world_size - 1}")
        self.n_items, self.n_volumes = n_items, n_volumes
        self.batch_size = batch_size
        self.volumes_per_batch = min(volumes_per_batch, n_volumes)
        self.uses_volumes = uses_volumes
        self.seed, self.rank, self.world_size = seed, rank, world_size
        parts = math.ceil(n_items / batch_size)
        self.parts = parts if n_items // parts >= 2 else n_items // 2
        self.batches_per_epoch = math.ceil(self.parts / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start {start} is outside 0 .. {self.batches_per_epoch}")
        self.epoch, self.start = epoch, start

    def epoch_items(self, epoch: int) -> list[tuple[int, ...]]:
        """The item batches of ``epoch`` for all ranks, padded to a multiple of ``world_size``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        batches = [tuple(int(i) for i in part) for part in np.array_split(order, self.parts)]
        padded = self.batches_per_epoch * self.world_size
        return (batches * math.ceil(padded / len(batches)))[:padded]

    def rank_keys(self, epoch: int) -> list[JointBatchKey]:
        """This rank's keys of ``epoch``."""
        batches = self.epoch_items(epoch)
        keys = []
        for position, number in enumerate(range(self.rank, len(batches), self.world_size)):
            volumes: tuple[int, ...] = ()
            if self.volumes_per_batch and self.uses_volumes(epoch * self.batches_per_epoch + position):
                rng = np.random.default_rng([self.seed, epoch, number, 1])
                volumes = tuple(int(v) for v in rng.choice(self.n_volumes, self.volumes_per_batch, replace=False))
            keys.append(JointBatchKey(items=batches[number], volumes=volumes, epoch=epoch, batch=number))
        return keys

    def __iter__(self) -> Iterator[JointBatchKey]:
        yield from self.rank_keys(self.epoch)[self.start :]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start
