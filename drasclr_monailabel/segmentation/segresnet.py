"""MONAI's SegResNet trained from scratch: the outside baseline of the label-efficiency benchmark,
and the app's second segmentation network (``--conf network segresnet``).

SegResNet sees only the CT channel of the network input (no atlas coordinates, no pretraining), as
a MONAI user would train it, but otherwise goes through the same fine-tuning
(:func:`drasclr_monailabel.segmentation.training.finetune`), whole-scan inference
(:func:`drasclr_monailabel.segmentation.inference.window_probabilities`) and checkpoints
(:mod:`drasclr_monailabel.segmentation.checkpoint`) as the DrasCLR U-Net, so the comparison
changes the network and nothing else.
"""

from __future__ import annotations

import torch
from monai.networks.nets import SegResNet
from torch import nn

from drasclr_monailabel.segmentation.network import IMAGE_CHANNELS

BLOCKS_DOWN = (1, 2, 2, 4)
"""Residual blocks per SegResNet level (MONAI's default depth): three 2x downsamplings."""
DIVISOR = 2 ** (len(BLOCKS_DOWN) - 1)
"""Window and patch edges must be multiples of this (the network's total stride, 8)."""


class MonaiSegResNet(nn.Module):
    """SegResNet on ``(N, 4, D, H, W)`` network inputs (CT + coordinates): ``-> (N, C, D, H, W)`` logits.

    ``init_filters`` 8 is MONAI's default; with it a training step (4 patches of 32^3) costs about
    what the DrasCLR U-Net's does (0.70 s against 0.59 s on one shared CPU core, 1.2 M parameters
    against 10.2 M, most of those in the CondConv experts), so equal steps are about equal compute.
    ``encoder`` holds the initial convolution and the downsampling levels (the learning-rate groups of
    :func:`finetune` need an encoder/decoder split; scratch runs train both at the same rate).
    """

    def __init__(self, num_classes: int, init_filters: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = SegResNet(spatial_dims=3, in_channels=IMAGE_CHANNELS, out_channels=num_classes, init_filters=init_filters,
                             dropout_prob=dropout, blocks_down=BLOCKS_DOWN, blocks_up=(1,) * (len(BLOCKS_DOWN) - 1))
        self.encoder = nn.ModuleList([self.net.convInit, self.net.down_layers])
        self.num_classes = num_classes

    @property
    def divisor(self) -> int:
        """Window and patch edges must be multiples of this (:data:`DIVISOR`)."""
        return DIVISOR

    def needs_batches(self, patch_size: int) -> bool:
        """Never: SegResNet's GroupNorm normalises within each patch, so one patch per step trains."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :IMAGE_CHANNELS])

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        encoder = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in encoder]
