"""Emphysema segmentation network: the DrasCLR encoder with a U-Net decoder.

Input is ``(N, 4, D, H, W)``: channel 0 the CT in network units (:data:`LUNG_WINDOW`), channels 1-3
the normalised atlas coordinate (x, y, z) of every voxel (from the affine registration). Each
window's location, which routes the encoder's conditional convolutions, is read from the
coordinate channels: with ``routing_block`` (the app's model: :data:`ROUTING_BLOCK`) at the centre
of each block of the window, so a 32^3 cell is routed alike in a 32^3 training patch and in a
larger inference window; without it (nnU-Net, whose patches are one size in training and
inference) at the window's centre voxel. Because the location travels inside the image, MONAI's
sliding-window inference, random-crop training and nnU-Net's patch pipeline all work unchanged:
they crop the coordinates with the image.

The decoder is plain (not conditional): up-sample, concatenate the encoder map of the same
stride, two 3x3x3 convolutions with instance norm and LeakyReLU. Spatial dropout before each
decoder block lets MC-dropout estimate uncertainty for active learning. With
``deep_supervision`` the network returns logits at every decoder resolution, finest first (the
nnU-Net convention); otherwise only the full-resolution logits. Logits end without a
nonlinearity.
"""

from __future__ import annotations

import torch
from torch import nn

from drasclr_monailabel.models.encoder import DrasclrEncoder

IMAGE_CHANNELS = 1
COORDINATE_CHANNELS = 3
ROUTING_BLOCK = 32
"""Edge (1 mm voxels) of the blocks each routed by the location at their centre: the landmark
patch of pretraining. A 32^3 fine-tuning patch is one block; a 64^3 inference window is eight,
each routed as a 32^3 patch there is in training (benchmarks/window_condition.py)."""


class DecoderBlock(nn.Module):
    """Up-sample x2, concatenate the skip map, (dropout), two conv-norm-act layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.convs = nn.Sequential(
            nn.Conv3d(out_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(self.dropout(torch.cat([self.up(x), skip], dim=1)))


class EmphysemaUNet(nn.Module):
    """DrasCLR encoder + U-Net decoder.

    Args:
        encoder: a :class:`DrasclrEncoder` (pretrained or fresh); its ``in_channels`` must be 1.
        num_classes: output channels (background included).
        decoder_channels: width of each decoder block, coarsest first; defaults to the encoder's
            skip widths (so the finest block has the stem's width).
        dropout: spatial dropout probability in the decoder (MC-dropout uses it at test time).
        deep_supervision: return a list of logits (finest first) instead of one tensor.
        routing_block: None routes each window by the location at its centre; an edge (a
            multiple of the encoder's stride, 32) routes each block of that edge inside the window
            by the location at the block's centre (see :func:`window_locations`); windows and
            patches must then be made of whole blocks.
    """

    def __init__(
        self,
        encoder: DrasclrEncoder,
        num_classes: int,
        decoder_channels: list[int] | None = None,
        dropout: float = 0.1,
        deep_supervision: bool = False,
        routing_block: int | None = None,
    ) -> None:
        super().__init__()
        if encoder.architecture.in_channels != IMAGE_CHANNELS:
            raise ValueError(f"the encoder must take {IMAGE_CHANNELS} image channel, got {encoder.architecture.in_channels}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        stride = encoder.feature_strides[-1]
        if routing_block is not None and (routing_block < 1 or routing_block % stride):
            raise ValueError(f"routing_block must be a multiple of {stride} (the encoder's total stride), got {routing_block}")
        self.routing_block = routing_block
        skips = encoder.feature_channels[:-1][::-1]
        widths = decoder_channels or skips
        if len(widths) != len(skips):
            raise ValueError(f"decoder_channels needs {len(skips)} widths (one per encoder level), got {len(widths)}")
        previous = encoder.feature_channels[-1]
        self.decoder = nn.ModuleList()
        for skip, width in zip(skips, widths):
            self.decoder.append(DecoderBlock(previous, skip, width, dropout))
            previous = width
        self.heads = nn.ModuleList([nn.Conv3d(width, num_classes, 1) for width in widths])

    def needs_batches(self, patch_size: int) -> bool:
        """Whether training-mode normalisation needs 2+ patches of ``patch_size`` per step (the
        encoder's, :meth:`DrasclrEncoder.needs_batches`; the decoder's instance norm never does)."""
        return self.encoder.needs_batches(patch_size)

    @property
    def divisor(self) -> int:
        """Window edges must be multiples of this (the encoder's total stride, or the routing block)."""
        return self.routing_block or self.encoder.feature_strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(N, 4, D, H, W)`` -> logits ``(N, C, D, H, W)`` (or a list, finest first)."""
        image = x[:, :IMAGE_CHANNELS]
        location = window_locations(x, self.routing_block)
        features = self.encoder.forward_features(image, location)
        y = features[-1]
        outputs = []
        for block, head, skip in zip(self.decoder, self.heads, features[-2::-1]):
            y = block(y, skip)
            outputs.append(head(y))
        if self.deep_supervision:
            return outputs[::-1]
        return outputs[-1]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.decoder.parameters(), *self.heads.parameters()]


def window_locations(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Atlas coordinate at each window's centre voxel: ``(N, 4, D, H, W) -> (N, 3)``; with
    ``block``, at the centre of each ``block^3`` cell of the window: ``(N, 3, D/b, H/b, W/b)``
    (a window of one block gives the window's location).

    When every window of the batch has the same location (to within float precision) a single
    ``(3,)`` location is returned, so the encoder takes its one-kernel fast path.
    """
    if x.shape[1] != IMAGE_CHANNELS + COORDINATE_CHANNELS:
        raise ValueError(f"input needs {IMAGE_CHANNELS + COORDINATE_CHANNELS} channels (image + atlas x, y, z), got {x.shape[1]}")
    if block is not None and any(s % block for s in x.shape[2:]):
        raise ValueError(f"window {tuple(x.shape[2:])} is not made of whole {block}^3 routing blocks")
    if block is not None and any(s > block for s in x.shape[2:]):
        centres = [torch.arange(block // 2, s, block, device=x.device) for s in x.shape[2:]]
        grid = x[:, IMAGE_CHANNELS:].index_select(2, centres[0]).index_select(3, centres[1]).index_select(4, centres[2])
        return grid.float()
    d, h, w = (s // 2 for s in x.shape[2:])
    location = x[:, IMAGE_CHANNELS:, d, h, w].float()
    if torch.allclose(location, location[:1].expand_as(location)):
        return location[0]
    return location
