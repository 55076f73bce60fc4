"""Landmark batch sampler: every valid pair once per epoch, reshuffled, sharded, worker-safe."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from drasclr_monailabel.ssl.cache import open_cache, read_atlas_landmarks
from drasclr_monailabel.ssl.patches import LandmarkCropDataset, read_crop
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler


def random_valid(subjects: int = 23, landmarks: int = 7, seed: int = 0) -> np.ndarray:
    valid = np.random.default_rng(seed).random((subjects, landmarks)) > 0.2
    valid[:, 3] = False  # a landmark outside every scan
    valid[:, 5] = False
    valid[4, 5] = True  # a landmark valid for a single subject: cannot form a batch
    return valid


def pairs(batches) -> Counter:
    return Counter((b.landmark, s) for b in batches for s in b.subjects)


def test_every_valid_pair_once_per_epoch_and_invalid_pairs_never() -> None:
    valid = random_valid()
    sampler = LandmarkBatchSampler(valid, batch_size=5, seed=3)
    seen = pairs(sampler.epoch_batches(0))
    usable = valid.copy()
    usable[:, 5] = False
    expected = {(int(l), int(s)) for s, l in zip(*np.nonzero(usable))}
    assert set(seen) == expected and set(seen.values()) == {1}
    for batch in sampler.epoch_batches(0):
        assert 2 <= len(batch.subjects) <= 5
        assert all(valid[s, batch.landmark] for s in batch.subjects)


def test_order_changes_per_epoch_and_is_reproducible() -> None:
    sampler = LandmarkBatchSampler(random_valid(), batch_size=4, seed=1)
    first, second = sampler.epoch_batches(0), sampler.epoch_batches(1)
    assert first != second
    assert [b.landmark for b in first] != sorted(b.landmark for b in first)  # landmarks interleaved
    assert pairs(first) == pairs(second)
    assert first == LandmarkBatchSampler(random_valid(), batch_size=4, seed=1).epoch_batches(0)


def test_small_batches_never_fall_below_min_batch() -> None:
    valid = np.ones((7, 2), dtype=bool)
    sampler = LandmarkBatchSampler(valid, batch_size=2, seed=0)
    batches = sampler.epoch_batches(0)
    assert all(len(b.subjects) >= 2 for b in batches)
    assert sum(len(b.subjects) for b in batches) == 14


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_global_batch_of_one_landmark_without_overlap(world_size: int) -> None:
    valid = random_valid()
    samplers = [LandmarkBatchSampler(valid, batch_size=4, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(batches) == s.batches_per_epoch for batches, s in zip(per_rank, samplers))
    everything = samplers[0].epoch_batches(0)
    assert len(everything) == samplers[0].batches_per_epoch  # no padding batches
    for step, global_batch in enumerate(everything):
        shares = [batches[step] for batches in per_rank]
        assert {share.landmark for share in shares} == {global_batch.landmark}  # one landmark per step on every rank
        assert sum((share.subjects for share in shares), ()) == global_batch.subjects  # rank order makes up the batch
        assert all(len(share.subjects) >= 2 for share in shares)
        assert len(global_batch.subjects) <= 4 * world_size
    usable = valid.sum(axis=0) >= 2 * world_size
    expected = {(int(l), int(s)) for s, l in zip(*np.nonzero(valid)) if usable[l]}
    seen = pairs(everything)
    assert set(seen) == expected and set(seen.values()) == {1}
    assert samplers[0].keys_per_landmark_epoch.tolist() == np.where(usable, valid.sum(axis=0), 0).tolist()


def test_set_epoch_with_start_resumes_mid_epoch() -> None:
    sampler = LandmarkBatchSampler(random_valid(), batch_size=4, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=5)
    assert list(sampler) == full[5:]
    assert len(sampler) == len(full) - 5


def test_data_loader_workers_serve_the_landmark_of_each_batch(synthetic_atlas, synthetic_cache) -> None:
    atlas = read_atlas_landmarks(synthetic_atlas)
    index = open_cache(synthetic_cache, atlas)
    dataset = LandmarkCropDataset(index, atlas.neighbours, crop_size=36)
    sampler = LandmarkBatchSampler(index.valid, batch_size=3, seed=0)
    expected = list(sampler)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=2)
    count = 0
    for key, batch in zip(expected, loader):
        assert batch["landmark"] == key.landmark
        assert batch["subjects"].tolist() == list(key.subjects)
        assert batch["crops"].shape == (len(key.subjects), 3, 36, 36, 36)
        subject = key.subjects[-1]
        image = np.load(index.image_paths[subject])
        for column, landmark in enumerate([key.landmark, *atlas.neighbours[key.landmark]]):
            direct = read_crop(image, index.centres[subject, landmark], 36)
            assert np.array_equal(batch["crops"][-1, column].numpy(), direct)
        valid_expected = index.valid[np.ix_(list(key.subjects), atlas.neighbours[key.landmark])]
        assert np.array_equal(batch["neighbour_valid"].numpy(), valid_expected)
        count += 1
    assert count == len(expected) > 0


def test_read_crop_pads_with_air_outside_the_image() -> None:
    image = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    crop = read_crop(image, np.array([0, 3, 6]), 4)
    assert crop.shape == (4, 4, 4)
    assert np.array_equal(crop[2:, :, :3], image[0:2, 1:5, 4:7])
    assert (crop[:2] == -1024).all() and (crop[:, :, 3:] == -1024).all()
    assert (read_crop(image, np.array([50, 50, 50]), 4) == -1024).all()
