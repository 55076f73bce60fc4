"""Precise BatchNorm (Wu and Johnson, 2021): recompute population statistics after training.

DrasCLR trains on batches of one landmark, so every BatchNorm layer normalises a landmark by its
own batch statistics, and the running averages it keeps follow the last few landmarks trained.
Downstream use (embeddings, the segmentation encoder in eval mode) normalises with the running
statistics, so they should describe every landmark. Here the frozen network is run in training
mode over batches that mix landmarks, drawn like inference data (un-augmented patches), and each
layer's running mean and variance become the plain average of the per-batch values
(``momentum=None``, PyTorch's cumulative average).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

Batch = TypeVar("Batch")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Batch], forward: Callable[[Batch], object]) -> int:
    """Replace the running statistics of every BatchNorm layer in ``model`` by their average over
    ``batches`` (``forward(batch)`` runs ``model`` on one); returns the number of batches used.

    Parameters are untouched; each layer's momentum and the model's train/eval mode are restored.
    With no batch, or when ``forward`` raises, the statistics are left as they were.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(layer.momentum, layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
             for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
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
        model.train(was_training)
        for layer, (momentum, mean, var, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if count == 0:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(tracked)
    return count
