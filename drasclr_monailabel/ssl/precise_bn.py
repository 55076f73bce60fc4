"""Precise BatchNorm (Wu and Johnson, 2021): recompute population statistics after training.

DrasCLR trains on batches of one landmark, so every BatchNorm layer normalises a landmark by its
own batch statistics, and the running averages it keeps follow the last few landmarks trained.
Downstream use (embeddings, the segmentation encoder in eval mode) normalises with the running
statistics, so they should describe every landmark. Here the frozen network is run in training
mode over batches drawn like inference data (un-augmented patches of many landmarks), and each
layer's running mean and variance become the mean and variance of its input over all samples
of all batches (pooled sums, so small batches do not bias the variance low as an average of
per-batch variances would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

Batch = TypeVar("Batch")


class _Moments:
    """Per-channel count, sum and sum of squares of a BatchNorm layer's inputs (float64)."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64, device=device)
        self.squares = torch.zeros(channels, dtype=torch.float64, device=device)

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (C, N * spatial)
        self.count += x.shape[1]
        self.total += x.sum(dim=1)
        self.squares += (x * x).sum(dim=1)

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance over every value seen."""
        mean = self.total / self.count
        variance = (self.squares - self.count * mean * mean) / max(self.count - 1, 1)
        return mean, variance.clamp(min=0.0)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Batch], forward: Callable[[Batch], object]) -> int:
    """Set the running statistics of every BatchNorm layer in ``model`` to the mean and variance of
    its inputs over ``batches`` (``forward(batch)`` runs ``model`` on one); returns the number of
    batches used.

    During the pass every layer normalises with its batch statistics, as in training. Parameters
    are untouched and the model's train/eval mode is restored. With no batch, or when ``forward``
    raises, the statistics are left as they were.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    moments = [_Moments(layer.num_features, layer.running_mean.device) for layer in layers]
    hooks = [layer.register_forward_pre_hook(moment) for layer, moment in zip(layers, moments)]
    saved = [(layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone()) for layer in layers]
    was_training = model.training
    model.train()
    count = 0
    try:
        for batch in batches:
            forward(batch)
            count += 1
    except BaseException:
        count = 0
        raise
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        for layer, moment, (mean, var, tracked) in zip(layers, moments, saved):
            if count and moment.count:
                new_mean, new_var = moment.mean_and_variance()
                layer.running_mean.copy_(new_mean.to(layer.running_mean.dtype))
                layer.running_var.copy_(new_var.to(layer.running_var.dtype))
                layer.num_batches_tracked.copy_(tracked + count)
            else:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(tracked)
    return count
