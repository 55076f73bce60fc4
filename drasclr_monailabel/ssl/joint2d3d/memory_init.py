"""DeepCluster-v2's memory before the first epoch: one pass without gradient over all the data.

DeepCluster-v2 trains each sample towards the k-means cluster of its projection in a memory bank.
With an empty bank the first epoch has no targets and its loss is 0 (a wasted epoch, and with a
one-epoch recipe a run that learns nothing). As in the reference, every 2D item (its global
crops) and every volume (its two views) is projected once before the first step, the banks are
filled, and the first k-means runs on them.

Each process projects its share (the epoch-0 item batches of its rank, and every
``world_size``-th chunk of volumes) and the banks are updated with the rows of all processes, so
every process ends with the same banks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from drasclr_monailabel.ssl.distributed import DistContext, all_gather_rows
from drasclr_monailabel.ssl.joint2d3d.augment import SliceAugmenter
from drasclr_monailabel.ssl.joint2d3d.data import JointBatchSampler, JointDataset
from drasclr_monailabel.ssl.joint2d3d.losses import ClusterMemory
from drasclr_monailabel.ssl.joint2d3d.network import Joint2d3dNetwork


@torch.no_grad()
def fill_memories(network: Joint2d3dNetwork, dataset: JointDataset, sampler: JointBatchSampler, augmenter: SliceAugmenter,
                  memories: dict[str, ClusterMemory], context: DistContext, generator: torch.Generator,
                  volumes_per_batch: int, jitter_ct: bool) -> None:
    """Write every item's (``memories["slice"]``) and every volume's (``memories["volume"]``, if
    present) mean unit projection into the banks (training-mode BatchNorm, as in training)."""
    device = context.device
    if "slice" in memories:
        batches = sampler.epoch_items(0)[context.rank :: context.world_size]
        for items in batches:
            pixels = torch.from_numpy(np.stack([dataset.read_item(item, 0) for item in items])).unsqueeze(1).to(device)
            ids = torch.tensor(items, dtype=torch.int64, device=device)
            crops = augmenter.global_crops(pixels, (ids < len(dataset.images)) | jitter_ct, generator)
            z, _ = network.slice_head(network.encoder.slices.stage_pools(crops)[-1])
            _write(memories["slice"], ids, z.view(-1, len(items), z.shape[1]).transpose(0, 1), context)
    if "volume" in memories:
        for number, volumes in _volume_chunks(len(dataset.volumes), volumes_per_batch, context):
            views, positions, kinds = zip(*(dataset.read_views(v, 0, number) for v in volumes))
            slices = augmenter.volume_views(torch.from_numpy(np.stack(views)).to(device), jitter_ct, generator)
            count, s = 2 * len(volumes), positions[0].shape[1]
            tokens = network.encoder.slices.token(network.encoder.slices.multi_scale(slices)).view(count, s, -1)
            _, volume = network.encoder.embed_volume(tokens, torch.from_numpy(np.stack(positions)).to(device).view(count, s),
                                                     torch.tensor(kinds, device=device).repeat_interleave(2))
            z, _ = network.volume_head(volume)
            _write(memories["volume"], torch.tensor(volumes, dtype=torch.int64, device=device), z.view(-1, 2, z.shape[1]), context)


def _write(memory: ClusterMemory, ids: torch.Tensor, z: torch.Tensor, context: DistContext) -> None:
    """Store the normalised mean over views of ``z`` (n, views, P) for ``ids`` (n,) of every process."""
    mean = F.normalize(z.float().mean(dim=1), dim=1)
    memory.update(all_gather_rows(ids, context), all_gather_rows(mean.contiguous(), context))


def _volume_chunks(n_volumes: int, size: int, context: DistContext) -> list[tuple[int, tuple[int, ...]]]:
    """This process's (chunk number, volume ids) of consecutive chunks of ``size`` volumes; the
    list is padded by repeating its head so every process gets as many chunks (equal collectives)."""
    chunks = [tuple(range(start, min(start + size, n_volumes))) for start in range(0, n_volumes, size)]
    padded = -(-len(chunks) // context.world_size) * context.world_size
    chunks = (chunks * padded)[:padded]
    return [(number, chunk) for number, chunk in enumerate(chunks)][context.rank :: context.world_size]
