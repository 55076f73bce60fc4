"""Read landmark patches (and the larger crops that augmentation needs) from a preprocessing cache.

Images are opened with ``np.load(mmap_mode="r")`` for every batch, so only the crops are read
from disk and no file handle stays open (9,000 scans would exhaust the descriptor limit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from drasclr_monailabel.ssl.cache import CacheIndex
from drasclr_monailabel.ssl.sampler import LandmarkBatch

PAD_HU = -1024


def read_crop(image: np.ndarray, centre: np.ndarray, size: int, out: np.ndarray | None = None, fill: int = PAD_HU) -> np.ndarray:
    """The cube ``image[c - size//2 : c - size//2 + size]`` per axis around voxel ``centre`` (z, y, x).

    With ``size`` 32 this is the patch of docs/formats.md (centre at index 16); parts outside the
    image are ``fill`` (air). ``out`` (size^3, the image dtype) is filled in place when given.
    """
    if out is None:
        out = np.empty((size,) * 3, dtype=image.dtype)
    low = np.asarray(centre, dtype=np.int64) - size // 2
    src_low = np.maximum(low, 0)
    src_high = np.minimum(low + size, image.shape)
    if np.any(src_high <= src_low):
        out.fill(fill)
        return out
    dst_low, dst_high = src_low - low, src_high - low
    if np.any(dst_low > 0) or np.any(dst_high < size):
        out.fill(fill)
    out[dst_low[0]:dst_high[0], dst_low[1]:dst_high[1], dst_low[2]:dst_high[2]] = \
        image[src_low[0]:src_high[0], src_low[1]:src_high[1], src_low[2]:src_high[2]]
    return out


class LandmarkCropDataset(Dataset):
    """Map a :class:`LandmarkBatch` key to the int16 HU crops of that batch.

    Returns a dict of tensors:
        ``crops``: int16 (B, 1 + k, S, S, S): the crop at the landmark, then at its k neighbours;
        ``subjects``: int64 (B,); ``neighbour_valid``: bool (B, k): the neighbour landmark is
        valid for that subject;
    and plain ints ``landmark`` and ``neighbours`` (a list of k), which stay on the host so the
    training loop can index queues and locations without waiting for the GPU.

    Crops stay int16 until they reach the training device (half the transfer of float32).

    Args:
        index: the cache.
        neighbours: int64 (L, k) neighbour landmarks of each landmark (k may be 0).
        crop_size: crop edge in voxels (patch size plus room for augmentation).
    """

    def __init__(self, index: CacheIndex, neighbours: np.ndarray, crop_size: int) -> None:
        self.index = index
        self.neighbours = np.asarray(neighbours, dtype=np.int64).reshape(index.centres.shape[1], -1)
        self.crop_size = crop_size

    def __getitem__(self, key: LandmarkBatch) -> dict[str, Any]:
        subjects = np.asarray(key.subjects, dtype=np.int64)
        neighbours = self.neighbours[key.landmark]
        landmarks = np.concatenate([[key.landmark], neighbours])
        size = self.crop_size
        crops = np.empty((len(subjects), len(landmarks), size, size, size), dtype=np.int16)
        for row, subject in enumerate(subjects):
            image = np.load(self.index.image_paths[subject], mmap_mode="r")
            for column, landmark in enumerate(landmarks):
                read_crop(image, self.index.centres[subject, landmark], size, out=crops[row, column])
        return {
            "crops": torch.from_numpy(crops),
            "landmark": int(key.landmark),
            "neighbours": [int(n) for n in neighbours],
            "subjects": torch.from_numpy(subjects),
            "neighbour_valid": torch.from_numpy(self.index.valid[np.ix_(subjects, neighbours)].copy()),
        }
