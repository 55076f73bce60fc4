"""Configuration sections that every pretraining method shares: the training run and the optimiser.

A method's recipe is a dataclass with (at least) ``method``, ``train`` and ``optim`` fields plus its
own sections; :func:`drasclr_monailabel.config.load_config` validates the YAML against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Keys that change how a run is executed but not what it computes: they may differ on --resume.
RESUME_SAFE_KEYS = frozenset({"train.num_workers", "train.checkpoint_every", "train.log_every", "train.progress"})


@dataclass
class TrainConfig:
    """The training run.

    Attributes:
        seed: seeds model initialisation, sampling order and augmentations.
        batch_size: samples per step and per process (global batch = batch_size x processes).
        epochs: passes over the data; sets the schedule length unless ``max_steps`` is given.
        max_steps: total optimiser steps (schedule length and stop), overriding ``epochs``.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        amp: mixed precision on GPU: ``fp16`` (autocast with loss scaling), ``bf16`` (autocast)
            or ``"off"`` (quoted in YAML, where a bare off means false); the CPU always runs fp32.
        num_workers: data-loading processes per training process (0: load in the main process).
        checkpoint_every: write ``checkpoints/last.pt`` every this many steps (and at the end).
        log_every: TensorBoard and progress-bar update interval in steps.
        progress: show a tqdm progress bar (main process only).
    """

    seed: int = 0
    batch_size: int = 32
    epochs: int = 20
    max_steps: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "fp16", "bf16"] = "fp16"
    num_workers: int = 4
    checkpoint_every: int = 1000
    log_every: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (BatchNorm needs two samples)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")


@dataclass
class OptimConfig:
    """SGD with momentum and a cosine learning-rate schedule.

    Attributes:
        lr: learning rate at a global batch of ``reference_batch``; the rate used is
            ``lr * global_batch / reference_batch`` (linear scaling rule).
        reference_batch: the global batch that ``lr`` was tuned for (DrasCLR: 0.01 at 128).
        momentum: SGD momentum.
        weight_decay: L2 weight decay on every trainable parameter.
        warmup_steps: linear warm-up from 0 before the schedule.
        schedule: ``cosine`` (to 0 at the last step) or ``constant``.
    """

    lr: float = 0.01
    reference_batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.reference_batch < 1:
            raise ValueError(f"reference_batch must be at least 1, got {self.reference_batch}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must not be negative")
