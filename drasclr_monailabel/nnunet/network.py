"""The emphysema network behind nnU-Net's input conventions.

nnU-Net hands a network its preprocessed patch: channel 0 is the CT after nnU-Net's own
normalisation (``CTNormalization``: clip to the 0.5-99.5 percentiles of the labelled voxels, then
subtract their mean and divide by their standard deviation; ``NoNormalization``: HU unchanged),
and channels 1-3, when the dataset has them, the atlas coordinates (``noNorm``, unchanged).
:class:`DrasclrNnunetNetwork` undoes the affine part of that normalisation (back to HU, within
nnU-Net's clip range), applies the intensity window the DrasCLR encoder was pretrained with, adds
a constant location when the dataset has no coordinate channels, and runs
:class:`~drasclr_monailabel.segmentation.network.EmphysemaUNet`. Every constructor argument is
plain data so that nnU-Net's ``plans.json`` describes the network completely (training and
``nnUNetPredictor`` build it from there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.intensity import IntensityWindow
from drasclr_monailabel.segmentation.network import (
    COORDINATE_CHANNELS,
    IMAGE_CHANNELS,
    EmphysemaUNet,
)

NETWORK_CLASS_NAME = "drasclr_monailabel.nnunet.network.DrasclrNnunetNetwork"
ACCEPTED_INPUT_CHANNELS = (IMAGE_CHANNELS, IMAGE_CHANNELS + COORDINATE_CHANNELS)


def encoder_architecture(arguments: dict[str, Any]) -> EncoderArchitecture:
    """The ``encoder`` block of the network arguments (``EncoderArchitecture.to_dict()``) as a dataclass."""
    return EncoderArchitecture(**{k: v for k, v in arguments.items() if k != "name"})


def total_stride(architecture: EncoderArchitecture) -> int:
    """The encoder's total down-sampling (32 by default): patch edges must be multiples of it."""
    return 2 ** (len(architecture.block_channels) + 2)


def output_strides(architecture: EncoderArchitecture) -> list[int]:
    """Down-sampling factor of each deep-supervision output, finest first (1, 2, 4, ...).

    The decoder has one block per encoder map except the deepest, so for the default encoder
    (stem, three blocks, top) the outputs are at strides 1, 2, 4, 8 and 16.
    """
    return [2**i for i in range(len(architecture.block_channels) + 2)]


class DrasclrNnunetNetwork(nn.Module):
    """nnU-Net input ``(N, 1 or 4, D, H, W)`` -> emphysema logits, DrasCLR encoder inside.

    Args:
        input_channels: 1 (CT only: every window gets ``location``) or 4 (CT + atlas x, y, z).
        num_classes: output channels (nnU-Net's segmentation heads, background included).
        encoder: ``EncoderArchitecture.to_dict()`` of the encoder to build.
        hu_scale, hu_offset: ``HU = x * hu_scale + hu_offset`` undoes nnU-Net's normalisation of
            channel 0 (the labelled voxels' standard deviation and mean for CTNormalization;
            1 and 0 for noNorm).
        intensity: ``IntensityWindow.to_dict()`` the encoder expects (the lung window).
        location: normalised atlas coordinate (x, y, z) used when there are no coordinate channels.
        dropout: spatial dropout in the decoder.
        deep_supervision: return logits of every decoder level (finest first) while training.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder: dict[str, Any],
        hu_scale: float,
        hu_offset: float,
        intensity: dict[str, Any],
        location: Sequence[float] = (0.0, 0.0, 0.0),
        dropout: float = 0.1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if input_channels not in ACCEPTED_INPUT_CHANNELS:
            raise ValueError(f"the network takes {ACCEPTED_INPUT_CHANNELS[0]} channel (CT) or "
                             f"{ACCEPTED_INPUT_CHANNELS[1]} (CT + atlas coordinates), got {input_channels}")
        if len(location) != COORDINATE_CHANNELS:
            raise ValueError(f"location needs {COORDINATE_CHANNELS} numbers (atlas x, y, z), got {list(location)}")
        self.input_channels = input_channels
        self.hu_scale = float(hu_scale)
        self.hu_offset = float(hu_offset)
        self.window = IntensityWindow.from_dict(intensity)
        self.register_buffer("location", torch.tensor([float(v) for v in location]), persistent=False)
        self.model = EmphysemaUNet(DrasclrEncoder(encoder_architecture(encoder)), num_classes,
                                   dropout=dropout, deep_supervision=deep_supervision)

    @property
    def encoder(self) -> DrasclrEncoder:
        """The DrasCLR encoder (where a pretrained export is loaded)."""
        return self.model.encoder

    @property
    def deep_supervision(self) -> bool:
        return self.model.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.model.deep_supervision = bool(enabled)

    @property
    def divisor(self) -> int:
        """Patch edges must be multiples of this (the encoder's total stride, 32 by default)."""
        return self.model.divisor

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net input -> EmphysemaUNet input ``(N, 4, D, H, W)``: lung-window CT + coordinates."""
        if x.shape[1] != self.input_channels:
            raise ValueError(f"expected {self.input_channels} input channels, got {x.shape[1]}")
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(f"patch size {list(x.shape[2:])} must be a multiple of {self.divisor} on every axis")
        image = self.window(x[:, :IMAGE_CHANNELS] * self.hu_scale + self.hu_offset).to(x.dtype)
        if self.input_channels == IMAGE_CHANNELS:
            n, _, d, h, w = x.shape
            coordinates = self.location.to(x.dtype).view(1, COORDINATE_CHANNELS, 1, 1, 1).expand(n, -1, d, h, w)
        else:
            coordinates = x[:, IMAGE_CHANNELS:]
        return torch.cat([image, coordinates], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.model(self.network_input(x))
