"""2D slice encoder of the joint image-volume method: a torchvision ResNet on one-channel slices.

The trunk is assembled from torchvision's own residual blocks (``BasicBlock`` / ``Bottleneck``) in
the ResNet-18/34/50/101 layouts, randomly initialised (no downloaded weights), with a one-channel
stem. ``width`` is the channel count of the first stage: 64 gives exactly torchvision's network,
smaller values make the CPU demo affordable.

A slice gives two outputs:

* ``pooled``: global average pool of the last stage (C4 channels), the input of the 2D
  clustering heads (as in SwAV / DeepCluster-v2);
* ``token``: the multi-scale slice embedding: the global average pool of every stage, each
  L2-normalised (so no stage dominates by scale), concatenated and linearly mapped to
  ``embedding_dim`` (d). These are the tokens the volume transformer reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck

RESNET_LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


@dataclass
class SliceEncoderArchitecture:
    """Constructor arguments of :class:`SliceEncoder` (all stored in ``encoder.json``).

    Attributes:
        depth: ResNet depth (18, 34, 50 or 101).
        width: channels of the first stage (torchvision: 64); later stages double it.
        in_channels: input channels (1: grey-level slices and radiographs).
        embedding_dim: d, the size of the slice token.
    """

    depth: Literal[18, 34, 50, 101] = 50
    width: int = 64
    in_channels: int = 1
    embedding_dim: int = 640

    def __post_init__(self) -> None:
        if self.depth not in RESNET_LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYOUTS)}, got {self.depth}")
        if self.width < 4 or self.in_channels < 1 or self.embedding_dim < 1:
            raise ValueError("width must be at least 4, in_channels and embedding_dim at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class SliceFeatures(NamedTuple):
    """Outputs of :class:`SliceEncoder` for N slices."""

    pooled: torch.Tensor  # (N, C4) last-stage global average pool
    token: torch.Tensor  # (N, d) multi-scale slice embedding


class SliceEncoder(nn.Module):
    """(N, in_channels, H, W) slices -> :class:`SliceFeatures` (any H, W of 32 pixels or more)."""

    def __init__(self, architecture: SliceEncoderArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        block, layout = RESNET_LAYOUTS[architecture.depth]
        width = architecture.width
        self.stem = nn.Sequential(
            nn.Conv2d(architecture.in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages, channels, in_planes = [], [], width
        for index, blocks in enumerate(layout):
            planes = width * 2**index
            stage, in_planes = _make_stage(block, in_planes, planes, blocks, stride=1 if index == 0 else 2)
            stages.append(stage)
            channels.append(in_planes)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(channels)
        self.token = nn.Linear(sum(channels), architecture.embedding_dim)
        _initialise(self)

    @property
    def pooled_dim(self) -> int:
        return self.stage_channels[-1]

    def stage_pools(self, slices: torch.Tensor, recompute: bool = False) -> list[torch.Tensor]:
        """Global average pool of every stage's output: [(N, C1), ..., (N, C4)].

        ``recompute``: activation checkpointing by depth; only the input of the stem and of each
        residual block is kept for backward and the rest is recomputed there (about one more
        forward pass). Splitting by depth, not by slices, keeps every BatchNorm's batch the same
        as without it; the recomputation updates BatchNorm running statistics a second time.
        """
        x = self._run(self.stem, slices, recompute)
        pools = []
        for stage in self.stages:
            for block in stage:
                x = self._run(block, x, recompute)
            pools.append(x.mean(dim=(2, 3)))
        return pools

    def multi_scale(self, slices: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """(N, C1 + ... + C4): the stage pools, each L2-normalised, concatenated (input of ``token``)."""
        return _concat_normalised(self.stage_pools(slices, recompute))

    @staticmethod
    def _run(module: nn.Module, x: torch.Tensor, recompute: bool) -> torch.Tensor:
        if recompute and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, slices: torch.Tensor) -> SliceFeatures:
        pools = self.stage_pools(slices)
        return SliceFeatures(pooled=pools[-1], token=self.token(_concat_normalised(pools)))


def _concat_normalised(pools: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([F.normalize(p, dim=1) for p in pools], dim=1)


def _make_stage(block: type[nn.Module], in_planes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """One ResNet stage as torchvision builds it: a projection shortcut where the shape changes."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))
    layers = [block(in_planes, planes, stride, downsample)]
    layers += [block(out_planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), out_planes


def _initialise(module: nn.Module) -> None:
    """torchvision's ResNet initialisation, with the last BatchNorm of each residual branch at zero
    (each block starts as the identity, which SwAV and DeepCluster-v2 train with)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
