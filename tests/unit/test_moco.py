"""MoCo parts: InfoNCE against hand-computed values (with excluded negatives), per-landmark FIFO
queues that track written slots and subjects, momentum update."""

from __future__ import annotations

import math

import pytest
import torch

from drasclr_monailabel.ssl.moco import (
    EMPTY_SLOT,
    LandmarkQueues,
    info_nce,
    momentum_update,
    same_subject,
)


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


def test_an_excluded_negative_counts_for_nothing_and_gets_no_gradient() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    positive = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    excluded = torch.tensor([[False, True, True], [True, False, False]])
    loss = info_nce(anchor, positive, negatives, 1.0, excluded)
    # row 0 keeps negative 0 only; row 1 keeps negatives 1 and 2
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert loss[1].item() == pytest.approx(-math.log(math.e / (math.e + 1.0 + math.exp(0.8))), rel=1e-6)
    same = info_nce(anchor[:1], positive[:1], negatives[:1], 1.0)
    assert loss[0].item() == pytest.approx(same.item(), rel=1e-6)
    negatives.requires_grad_(True)
    info_nce(anchor, positive, negatives, 1.0, excluded)[0].backward()
    assert negatives.grad[1:].abs().sum() == 0 and negatives.grad[0].abs().sum() > 0


def test_info_nce_with_every_negative_excluded_is_zero() -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    loss = info_nce(anchor, anchor, torch.tensor([[0.0, 1.0]]), 0.2, torch.tensor([[True]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert info_nce(anchor, anchor, torch.zeros(0, 2), 0.2, torch.zeros(1, 0, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-7)


def test_same_subject_marks_the_anchors_own_keys() -> None:
    mask = same_subject(torch.tensor([3, 5]), torch.tensor([5, 3, 3, 7]))
    assert mask.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_an_unwritten_slot_is_never_a_negative() -> None:
    queues = LandmarkQueues(n_landmarks=2, size=4, dim=2)
    keys, subjects = queues.negatives(0)
    assert keys.shape == (0, 2) and subjects.shape == (0,)
    assert queues.fill().tolist() == [0.0, 0.0]
    queues.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 0], torch.tensor([7, 8]))
    keys, subjects = queues.negatives(0)
    torch.testing.assert_close(keys, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert subjects.tolist() == [7, 8]
    assert queues.fill().tolist() == [0.5, 0.0]
    assert queues.negatives(1)[0].shape[0] == 0
    assert (queues.subjects[0, 2:] == EMPTY_SLOT).all()


def test_other_landmark_negatives_are_written_keys_of_other_landmarks_only() -> None:
    queues = LandmarkQueues(n_landmarks=3, size=4, dim=1)
    queues.enqueue(torch.tensor([[1.0], [2.0], [3.0]]), [0, 0, 1], torch.tensor([5, 6, 5]))
    queues.enqueue(torch.tensor([[4.0], [5.0]]), [2, 2], torch.tensor([7, 8]))
    generator = torch.Generator().manual_seed(0)
    assert sorted(queues.sample_others(1, 10, generator)[:, 0].tolist()) == [1.0, 2.0, 4.0, 5.0]
    drawn = queues.sample_others(1, 2, generator)[:, 0].tolist()
    assert len(drawn) == 2 and len(set(drawn)) == 2 and set(drawn) <= {1.0, 2.0, 4.0, 5.0}
    assert queues.sample_others(0, 10, generator)[:, 0].tolist() == [3.0, 4.0, 5.0]


def test_queue_is_a_fifo_per_landmark_with_wrap_around() -> None:
    queues = LandmarkQueues(n_landmarks=3, size=4, dim=2)
    first = torch.arange(6, dtype=torch.float32).view(3, 2)
    queues.enqueue(first, [1, 1, 1], torch.tensor([0, 1, 2]))
    torch.testing.assert_close(queues.keys[1, :3], first)
    second = 10 + torch.arange(6, dtype=torch.float32).view(3, 2)
    queues.enqueue(second, [1, 1, 1], torch.tensor([3, 4, 5]))  # slots 3, 0, 1: overwrites the two oldest
    torch.testing.assert_close(queues.keys[1], torch.stack([second[1], second[2], first[2], second[0]]))
    assert queues.subjects[1].tolist() == [4, 5, 2, 3]
    assert queues.pointers[1] == 2
    assert queues.fill()[1] == 1.0 and queues.fill()[2] == 0.0


def test_mixed_landmarks_and_more_keys_than_slots() -> None:
    queues = LandmarkQueues(n_landmarks=2, size=2, dim=1)
    keys = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    queues.enqueue(keys, [0, 1, 0, 0, 1], torch.tensor([10, 11, 12, 13, 14]))
    assert sorted(queues.keys[0, :, 0].tolist()) == [3.0, 4.0]  # last two of landmark 0
    assert sorted(queues.subjects[0].tolist()) == [12, 13]
    assert queues.keys[1, :, 0].tolist() == [2.0, 5.0]
    with pytest.raises(ValueError, match="must match"):
        queues.enqueue(keys, [0, 1], torch.tensor([1, 2]))


def test_float16_storage_and_state_round_trip() -> None:
    queues = LandmarkQueues(n_landmarks=2, size=3, dim=4, dtype=torch.float16)
    assert queues.keys.dtype == torch.float16
    queues.enqueue(torch.nn.functional.normalize(torch.randn(2, 4), dim=1), [0, 0], torch.tensor([1, 2]))
    restored = LandmarkQueues(n_landmarks=2, size=3, dim=4, dtype=torch.float16)
    restored.load_state_dict(queues.state_dict())
    assert restored.pointers == [2, 0]
    assert torch.equal(restored.keys, queues.keys) and torch.equal(restored.subjects, queues.subjects)
    assert restored.negatives(0)[0].dtype == torch.float32


def test_momentum_update() -> None:
    target = [torch.ones(3), torch.zeros(2)]
    source = [torch.zeros(3), torch.ones(2)]
    momentum_update(target, source, 0.9)
    torch.testing.assert_close(target[0], torch.full((3,), 0.9))
    torch.testing.assert_close(target[1], torch.full((2,), 0.1))
