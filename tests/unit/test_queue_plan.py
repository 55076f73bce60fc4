"""Queue fill planning: expected fill from the sampler's keys per landmark and the run's length."""

from __future__ import annotations

import numpy as np
import pytest

from drasclr_monailabel.ssl.queue_plan import plan_queue_fill
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler


def test_fill_grows_with_steps_and_saturates() -> None:
    plan = plan_queue_fill(np.array([16, 16, 8, 0]), queue_size=32, total_steps=100, steps_per_epoch=10)
    np.testing.assert_allclose(plan.fill(5), [0.25, 0.25, 0.125, 0.0])  # half an epoch
    np.testing.assert_allclose(plan.fill(100), [1.0, 1.0, 1.0, 0.0])
    assert plan.first_full_step() == 20  # the median trained landmark writes 16 keys per 10 steps
    summary = plan.summary()
    assert summary["trained_landmarks"] == 3 and summary["median_fill_at_end"] == 1.0
    assert plan.warnings() == []


def test_a_short_run_on_a_small_cohort_warns_and_recommends_a_queue_it_can_fill() -> None:
    # 8 scans, 500 landmarks, batch 4, 120 steps: about one key per landmark in the whole run
    valid = np.ones((8, 500), dtype=bool)
    sampler = LandmarkBatchSampler(valid, batch_size=4)
    plan = plan_queue_fill(sampler.keys_per_landmark_epoch, 32, 120, sampler.batches_per_epoch)
    assert plan.summary()["median_fill_at_end"] == pytest.approx(8 * 120 / 1000 / 32, rel=1e-6)
    assert plan.first_full_step() is None
    assert plan.recommended_queue_size() == 16
    (warning,) = plan.warnings()
    assert "cannot fill" in warning and "about 1 keys" in warning


def test_recommended_queue_fills_early_and_never_exceeds_an_epoch_or_the_reference() -> None:
    big = plan_queue_fill(np.full(581, 9000), 4096, 20 * 9000 * 581 // 128, 9000 * 581 // 128)
    assert big.recommended_queue_size() == 4096 and big.summary()["median_fill_at_end"] == 1.0
    small = plan_queue_fill(np.full(500, 100), 4096, 20 * 100 * 500 // 32, 100 * 500 // 32)  # 100 scans, 20 epochs
    assert small.recommended_queue_size() == 64  # at most one epoch of keys (100)
    assert small.fill(small.total_steps // 4)[0] == pytest.approx(500 / 4096, rel=0.01)


def test_a_plan_needs_a_landmark_that_trains() -> None:
    with pytest.raises(ValueError, match="no landmark forms a batch"):
        plan_queue_fill(np.zeros(3), 8, 10, 5)


def test_a_queue_already_small_enough_gets_a_step_count_instead() -> None:
    plan = plan_queue_fill(np.full(10, 16), queue_size=16, total_steps=10, steps_per_epoch=40)
    (warning,) = plan.warnings()
    assert "Train for at least 40 steps" in warning and "queue_size to about" not in warning
