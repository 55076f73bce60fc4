"""Fine-tuning the emphysema model on a few labelled scans, CPU-feasible.

Patches are drawn on the 1 mm lung grid of each prepared case: half centred on labelled
emphysema (when the case has any), half anywhere in the lung, so a scan with 1 % emphysema still
teaches the foreground. The loss is cross-entropy plus soft Dice over the foreground classes.

Recipe for a pretrained encoder (the reason it works with one labelled scan): the encoder is
frozen for the first ``freeze_encoder_epochs`` while the fresh decoder learns to read its
features, then unfrozen at ``encoder_lr_scale`` times the decoder's learning rate. Its
BatchNorm normalises with the fine-tuning batches and re-estimates its statistics, as a scratch
encoder's does (``encoder_batchnorm="finetuning"``, the default: never worse than keeping the
pretraining statistics in the four paired runs of the label-efficiency benchmark, docs/benchmarks.md);
``"pretraining"`` keeps the statistics of pretraining (eval mode), which lets a step hold one patch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from drasclr_monailabel.segmentation.case import PreparedCase, network_window
from drasclr_monailabel.segmentation.network import ROUTING_BLOCK, EmphysemaUNet

ProgressCallback = Callable[[dict], None]


ENCODER_BATCHNORM = ("pretraining", "finetuning")
"""Where a pretrained encoder's BatchNorm statistics come from while fine-tuning."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (also the ``emphysema`` model's train options in the app).

    Attributes:
        max_epochs: epochs of ``steps_per_epoch`` optimiser steps each.
        steps_per_epoch: optimiser steps per epoch.
        batch_size: patches per step.
        patch_size: cubic patch edge in voxels (1 mm); a multiple of 32 and of the model's
            routing block. Default: one routing block, the landmark patch of pretraining.
        lr: decoder learning rate (AdamW).
        encoder_lr_scale: encoder learning rate = lr * this, once unfrozen.
        freeze_encoder_epochs: epochs with the encoder frozen (pretrained encoders only).
        encoder_batchnorm: pretrained encoders only: "finetuning" normalises with the fine-tuning
            batches and updates the statistics, as a scratch encoder does; "pretraining" keeps the
            BatchNorm running statistics of pretraining (eval mode).
        foreground_fraction: share of patches centred on labelled emphysema.
        weight_decay: AdamW weight decay.
        device: "cpu", "cuda" or "cuda:N".
        amp: mixed precision (used on CUDA only).
        seed: seeds patch sampling and initialisation noise.
    """

    max_epochs: int = 4
    steps_per_epoch: int = 25
    batch_size: int = 4
    patch_size: int = ROUTING_BLOCK
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    freeze_encoder_epochs: int = 1
    encoder_batchnorm: str = "finetuning"
    foreground_fraction: float = 0.5
    weight_decay: float = 1e-4
    device: str = "cpu"
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_size % 32:
            raise ValueError(f"patch_size must be a multiple of 32, got {self.patch_size}")
        for name in ("max_epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.encoder_batchnorm not in ENCODER_BATCHNORM:
            raise ValueError(f"encoder_batchnorm must be one of {', '.join(ENCODER_BATCHNORM)}, got {self.encoder_batchnorm!r}")

    def encoder_batchnorm_trains(self, pretrained: bool) -> bool:
        """Whether the encoder's BatchNorm normalises with the batch (and so needs 2+ patches per step)."""
        return not pretrained or self.encoder_batchnorm == "finetuning"


def finetune(
    model: EmphysemaUNet,
    cases: Sequence[PreparedCase],
    config: FinetuneConfig,
    pretrained: bool,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train ``model`` in place on prepared, labelled cases.

    Args:
        model: the network (moved to ``config.device``).
        cases: prepared cases with ``labels`` (class indices on the 1 mm grid).
        config: settings.
        pretrained: the encoder came from pretraining (enables the freeze-then-unfreeze recipe).
        progress: called after every epoch with the running statistics.
        should_stop: polled every step; training ends early (cleanly) when it returns True.

    Returns:
        Statistics: epochs and steps done, per-epoch mean loss, seconds, whether it stopped early.

    Raises:
        ValueError: no labelled case, or a patch that is not made of whole routing blocks.
    """
    if not cases or any(case.labels is None for case in cases):
        raise ValueError("fine-tuning needs at least one case, every case with labels")
    if config.patch_size % model.divisor:
        raise ValueError(f"patch_size {config.patch_size} must be a multiple of {model.divisor}, the model's routing block")
    device = torch.device(config.device)
    model.to(device)
    generator = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    samplers = [PatchCentres(case, config.patch_size) for case in cases]
    encoder_frozen = pretrained and config.freeze_encoder_epochs > 0
    optimizer = torch.optim.AdamW(
        [{"params": model.decoder_parameters(), "lr": config.lr},
         {"params": model.encoder_parameters(), "lr": config.lr * (config.encoder_lr_scale if pretrained else 1.0)}],
        weight_decay=config.weight_decay,
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    total_steps = config.max_epochs * config.steps_per_epoch
    stats: dict = {"epochs": 0, "steps": 0, "loss": [], "stopped_early": False, "pretrained": pretrained}
    start = time.perf_counter()
    for epoch in range(config.max_epochs):
        frozen = encoder_frozen and epoch < config.freeze_encoder_epochs
        _set_modes(model, keep_encoder_statistics=not config.encoder_batchnorm_trains(pretrained), frozen=frozen)
        losses = []
        for _ in range(config.steps_per_epoch):
            if should_stop is not None and should_stop():
                stats["stopped_early"] = True
                break
            for group, base in zip(optimizer.param_groups, (config.lr, config.lr * (config.encoder_lr_scale if pretrained else 1.0))):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * stats["steps"] / total_steps))
            x, y = patch_batch(cases, samplers, config, generator)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, enabled=use_amp):
                logits = model(x)
                loss = segmentation_loss(logits.float(), y, model.num_classes)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            stats["steps"] += 1
        if losses:
            stats["loss"].append(float(np.mean(losses)))
            stats["epochs"] = epoch + 1
        stats["seconds"] = round(time.perf_counter() - start, 2)
        if progress is not None:
            progress({**stats, "epoch": epoch + 1, "max_epochs": config.max_epochs})
        if stats["stopped_early"]:
            break
    model.eval()
    return stats


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice over foreground classes); logits (N,C,D,H,W), target (N,D,H,W)."""
    ce = F.cross_entropy(logits, target)
    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    one_hot = F.one_hot(target, num_classes).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    dice = (2 * intersection + 1.0) / (probabilities.sum(dims) + one_hot.sum(dims) + 1.0)
    return ce + (1.0 - dice.mean())


class PatchCentres:
    """Candidate patch centres of one case: lung voxels and labelled-foreground voxels."""

    def __init__(self, case: PreparedCase, patch: int) -> None:
        half = patch // 2
        shape = np.array(case.lungs.shape)
        low, high = np.full(3, half), shape - half
        if np.any(high <= low):
            raise ValueError(f"case {case.case_id} grid {tuple(shape)} is smaller than the {patch}^3 patch")

        def inside(points: np.ndarray) -> np.ndarray:
            keep = np.all((points >= low) & (points <= high), axis=1)
            return points[keep]

        self.lung = inside(np.argwhere(case.lungs > 0))
        self.foreground = inside(np.argwhere(case.labels > 0)) if case.labels is not None else np.empty((0, 3), int)
        self.half = half
        self.clip_low, self.clip_high = low, high

    def draw(self, generator: np.random.Generator, want_foreground: bool) -> np.ndarray:
        pool = self.foreground if want_foreground and len(self.foreground) else self.lung
        if len(pool) == 0:
            return generator.integers(self.clip_low, self.clip_high + 1)
        return pool[generator.integers(len(pool))]


def patch_batch(
    cases: Sequence[PreparedCase],
    samplers: list[PatchCentres],
    config: FinetuneConfig,
    generator: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fine-tuning batch: images (N, 4, P, P, P) in network units with intensity jitter and
    labels (N, P, P, P), N = ``config.batch_size`` patches of random cases, a
    ``config.foreground_fraction`` share centred on labelled voxels."""
    images, targets = [], []
    for _ in range(config.batch_size):
        index = int(generator.integers(len(cases)))
        sampler = samplers[index]
        centre = sampler.draw(generator, generator.random() < config.foreground_fraction)
        z, y, x = (slice(int(c) - sampler.half, int(c) + sampler.half) for c in centre)
        patch = torch.from_numpy(network_window(cases[index], *(np.arange(s.start, s.stop) for s in (z, y, x))))
        patch[0] = _intensity_jitter(patch[0], generator)
        images.append(patch)
        targets.append(torch.from_numpy(np.ascontiguousarray(cases[index].labels[z, y, x])).long())
    return torch.stack(images), torch.stack(targets)


def _intensity_jitter(image: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
    """Mild noise and contrast changes in network units (scanner variation), no geometric change
    (flips or rotations would contradict the atlas-coordinate channels)."""
    scale = 1.0 + 0.1 * float(generator.uniform(-1, 1))
    noise = float(generator.uniform(0.0, 0.05))
    return image * scale + noise * torch.randn_like(image)


def _set_modes(model: EmphysemaUNet, keep_encoder_statistics: bool, frozen: bool) -> None:
    """Decoder trains; encoder BatchNorm in eval mode (its stored statistics) when asked."""
    model.train()
    if keep_encoder_statistics:
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eval()
    for parameter in model.encoder_parameters():
        parameter.requires_grad_(not frozen)
