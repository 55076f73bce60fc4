"""MoCo parts: InfoNCE against a hand-computed value, per-landmark FIFO queues, momentum update."""

from __future__ import annotations

import math

import pytest
import torch

from drasclr_monailabel.ssl.moco import LandmarkQueues, info_nce, momentum_update


def test_info_nce_matches_a_hand_computed_value() -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    # logits: positive 0.6 / 0.5 = 1.2; negatives 0 / 0.5 = 0 and -1 / 0.5 = -2
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    assert info_nce(anchor, positive, negatives, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_per_sample_and_does_not_renormalise_the_anchor() -> None:
    anchor = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # first anchor: sum of two unit vectors
    positive = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0]])
    loss = info_nce(anchor, positive, negatives, 1.0)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_queue_is_a_fifo_per_landmark_with_wrap_around() -> None:
    queues = LandmarkQueues(n_landmarks=3, size=4, dim=2)
    initial_other = queues.keys[2].clone()
    first = torch.arange(6, dtype=torch.float32).view(3, 2)
    queues.enqueue(first, [1, 1, 1])
    torch.testing.assert_close(queues.keys[1, :3], first)
    second = 10 + torch.arange(6, dtype=torch.float32).view(3, 2)
    queues.enqueue(second, [1, 1, 1])  # slots 3, 0, 1: overwrites the two oldest
    torch.testing.assert_close(queues.keys[1], torch.stack([second[1], second[2], first[2], second[0]]))
    assert queues.pointers[1] == 2
    torch.testing.assert_close(queues.keys[2], initial_other)


def test_mixed_landmarks_and_more_keys_than_slots() -> None:
    queues = LandmarkQueues(n_landmarks=2, size=2, dim=1)
    keys = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    queues.enqueue(keys, [0, 1, 0, 0, 1])
    assert sorted(queues.keys[0, :, 0].tolist()) == [3.0, 4.0]  # last two of landmark 0
    assert queues.keys[1, :, 0].tolist() == [2.0, 5.0]


def test_float16_storage_and_state_round_trip() -> None:
    queues = LandmarkQueues(n_landmarks=2, size=3, dim=4, dtype=torch.float16)
    assert queues.keys.dtype == torch.float16
    assert torch.allclose(queues.keys.float().norm(dim=2), torch.ones(2, 3), atol=1e-3)
    queues.enqueue(torch.nn.functional.normalize(torch.randn(2, 4), dim=1), [0, 0])
    restored = LandmarkQueues(n_landmarks=2, size=3, dim=4, dtype=torch.float16, generator=torch.Generator().manual_seed(9))
    restored.load_state_dict(queues.state_dict())
    assert restored.pointers == [2, 0]
    assert torch.equal(restored.keys, queues.keys)
    assert restored.negatives(0).dtype == torch.float32


def test_momentum_update() -> None:
    target = [torch.ones(3), torch.zeros(2)]
    source = [torch.zeros(3), torch.ones(2)]
    momentum_update(target, source, 0.9)
    torch.testing.assert_close(target[0], torch.full((3,), 0.9))
    torch.testing.assert_close(target[1], torch.full((2,), 0.1))
