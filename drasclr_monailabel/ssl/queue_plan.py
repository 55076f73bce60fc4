"""How full the per-landmark negative queues get in a planned run, before it starts.

DrasCLR keeps one queue of K keys per landmark, so a landmark's queue only grows when a batch at
that landmark is trained: with L landmarks it fills about L times slower than MoCo's single queue.
Every epoch writes one key per valid (landmark, subject) pair, so after ``t`` of ``T`` steps
(``E`` steps per epoch) landmark ``l`` holds about ``min(K, n_l x t / E)`` keys, ``n_l`` being its
subjects per epoch. Only written slots are negatives (:class:`~drasclr_monailabel.ssl.moco.LandmarkQueues`),
so a queue that never fills means few negatives, not noise; the plan says how few, and which
queue size the cohort and step budget can actually fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The reference queue length; longer queues hold keys from a much older key network.
REFERENCE_QUEUE = 4096
# Warn when, by the end of the run, the median landmark's queue is less than this full.
LOW_FILL = 0.5
# A recommended queue fills by this share of the run, so most steps see a full queue.
FILL_BY = 0.25


@dataclass(frozen=True)
class QueueFillPlan:
    """Expected queue fill of a planned run.

    Attributes:
        queue_size: K.
        total_steps: T, optimiser steps of the run.
        steps_per_epoch: E.
        keys_per_epoch: int (L,): keys written to each landmark's queue per epoch (its subjects
            with a batch; 0 for landmarks that never form one).
    """

    queue_size: int
    total_steps: int
    steps_per_epoch: int
    keys_per_epoch: np.ndarray

    def keys_written(self, step: int) -> np.ndarray:
        """Expected keys written to each landmark's queue by ``step``: float (L,)."""
        return self.keys_per_epoch * (step / self.steps_per_epoch)

    def fill(self, step: int) -> np.ndarray:
        """Expected share of written slots per landmark at ``step``: float (L,) in [0, 1]."""
        return np.minimum(1.0, self.keys_written(step) / self.queue_size)

    @property
    def trained_landmarks(self) -> np.ndarray:
        return self.keys_per_epoch > 0

    def median_fill(self, step: int) -> float:
        """Median over the landmarks that form batches (the others never get a key)."""
        return float(np.median(self.fill(step)[self.trained_landmarks]))

    def first_full_step(self) -> int | None:
        """First step at which the median trained landmark's queue is full (None: never in the run)."""
        keys = float(np.median(self.keys_per_epoch[self.trained_landmarks]))
        step = int(np.ceil(self.queue_size * self.steps_per_epoch / keys)) if keys > 0 else None
        return step if step is not None and step <= self.total_steps else None

    def recommended_queue_size(self) -> int:
        """Largest power of two (16 .. 4096) that the median landmark fills within the first quarter
        of the run; at most one epoch of keys, so a queue never holds the same subject twice."""
        median_epoch = float(np.median(self.keys_per_epoch[self.trained_landmarks]))
        reachable = min(median_epoch, median_epoch * FILL_BY * self.total_steps / self.steps_per_epoch, REFERENCE_QUEUE)
        size = 16
        while size * 2 <= reachable:
            size *= 2
        return size

    def summary(self) -> dict:
        """JSON-ready figures for logs, ``plan.json`` and the docs table (``mean_fill_at_end``
        averages over every landmark, those that never form a batch counting as empty)."""
        epoch_keys = self.keys_per_epoch[self.trained_landmarks]
        return {
            "queue_size": self.queue_size,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": round(self.total_steps / self.steps_per_epoch, 3),
            "trained_landmarks": int(self.trained_landmarks.sum()),
            "keys_per_landmark_per_epoch_median": float(np.median(epoch_keys)),
            "keys_per_landmark_in_run_median": float(np.median(epoch_keys) * self.total_steps / self.steps_per_epoch),
            "median_fill_at_half": round(self.median_fill(self.total_steps // 2), 4),
            "median_fill_at_end": round(self.median_fill(self.total_steps), 4),
            "mean_fill_at_end": round(float(self.fill(self.total_steps).mean()), 4),
            "share_of_landmarks_full_at_end": round(float(np.mean(self.fill(self.total_steps)[self.trained_landmarks] >= 1.0)), 4),
            "first_step_median_queue_full": self.first_full_step(),
            "recommended_queue_size": self.recommended_queue_size(),
        }

    def warnings(self) -> list[str]:
        """Plain-language warnings when the queues cannot fill (empty when they do)."""
        end = self.median_fill(self.total_steps)
        if end >= LOW_FILL:
            return []
        median_epoch = float(np.median(self.keys_per_epoch[self.trained_landmarks]))
        keys = median_epoch * self.total_steps / self.steps_per_epoch
        recommended = self.recommended_queue_size()
        steps_to_fill = int(np.ceil(self.queue_size * self.steps_per_epoch / median_epoch))
        remedy = (f"Set moco.queue_size to about {recommended}, train longer, or add scans." if recommended < self.queue_size
                  else f"Train for at least {steps_to_fill} steps, or add scans.")
        return [f"negative queues cannot fill: in {self.total_steps} steps the median landmark receives about {keys:.0f} keys "
                f"for a queue of {self.queue_size} (median fill {end:.0%} at the end); negatives come from the batch and those "
                f"few keys. {remedy}"]


def plan_queue_fill(keys_per_epoch: np.ndarray, queue_size: int, total_steps: int, steps_per_epoch: int) -> QueueFillPlan:
    """Build the plan from the sampler's keys per landmark and epoch and the run's length."""
    if steps_per_epoch < 1 or total_steps < 1 or queue_size < 1:
        raise ValueError("queue_size, total_steps and steps_per_epoch must be at least 1")
    keys = np.asarray(keys_per_epoch, dtype=np.int64)
    if not (keys > 0).any():
        raise ValueError("no landmark forms a batch: nothing would be written to any queue")
    return QueueFillPlan(queue_size, total_steps, steps_per_epoch, keys)
