"""The DrasCLR encoder: 13 location-conditioned 3x3x3 convolutions, 32^3 patch -> 128-d vector.

Layout with the default widths (every convolution is a :class:`CondConv3d`, each followed by
BatchNorm (or GroupNorm, ``norm="group"``) and ELU; ``s2`` = stride 2):

```
stem     1 -> 8,  8 -> 8 s2                      32 -> 16
block 1  8 -> 16, 16 -> 16, 16 -> 16 s2          16 -> 8
block 2  16 -> 32, 32 -> 32, 32 -> 32 s2          8 -> 4
block 3  32 -> 64, 64 -> 64, 64 -> 64 s2          4 -> 2
top      64 -> 128, 128 -> 128 s2                 2 -> 1
```

The network is fully convolutional: a larger input (e.g. 96^3 for dense prediction) gives larger
maps; only the 128-d embedding pools the last map (global average; for a 32^3 input the last map
is 1^3, so this equals the flatten of the original design).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from drasclr_monailabel.models.condconv import CondConv3d

ARCHITECTURE_NAME = "drasclr_encoder"
NORMS = ("batch", "group")
GROUPS = 8
"""Channel groups of each GroupNorm (MONAI SegResNet's choice; fewer where a width is not a multiple)."""


@dataclass(frozen=True)
class EncoderArchitecture:
    """Every constructor argument of :class:`DrasclrEncoder` (also the ``model.encoder`` config).

    Attributes:
        in_channels: image channels (1 for CT).
        stem_channels: width of the two stem convolutions.
        block_channels: width of each down-sampling block.
        block_depth: convolutions per block; the last one has stride 2.
        top_channels: width of the first top convolution.
        embedding_dim: width of the last convolution = length of the embedding.
        num_experts: expert kernels per CondConv layer.
        location_dim: length of the location vector.
        conditioned: route every convolution by the location (DrasCLR). False: the location is
            ignored and every layer uses the kernel of one fixed location (the atlas centre), i.e.
            plain convolutions of the same shapes and cost (the paper's "no anatomy" ablation).
        norm: normalisation after every convolution. ``"batch"`` (DrasCLR's) normalises over the
            batch, so its statistics depend on what is batched together (one landmark per batch in
            pretraining, a few patches in fine-tuning); ``"group"`` normalises each sample on its
            own (:data:`GROUPS` groups), as SegResNet does, and has no running statistics.
    """

    in_channels: int = 1
    stem_channels: int = 8
    block_channels: tuple[int, ...] = (16, 32, 64)
    block_depth: int = 3
    top_channels: int = 128
    embedding_dim: int = 128
    num_experts: int = 8
    location_dim: int = 3
    conditioned: bool = True
    norm: str = "batch"

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_channels", tuple(int(c) for c in self.block_channels))
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        positive = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.name not in ("block_channels", "conditioned", "norm")}
        bad = [name for name, value in positive.items() if value < 1] + (["block_channels"] if any(c < 1 for c in self.block_channels) else [])
        if bad:
            raise ValueError(f"{bad[0]} must be positive")
        if self.block_depth < 2:
            raise ValueError(f"block_depth must be at least 2 (one conv plus the stride-2 conv), got {self.block_depth}")

    def to_dict(self) -> dict:
        """JSON-ready form, with the architecture ``name`` that :mod:`models.export` dispatches on."""
        return {"name": ARCHITECTURE_NAME, **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}}

    @property
    def num_convolutions(self) -> int:
        return 2 + len(self.block_channels) * self.block_depth + 2


class ConvNormElu(nn.Module):
    """CondConv3d -> BatchNorm3d or GroupNorm (``arch.norm``) -> ELU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, arch: EncoderArchitecture) -> None:
        super().__init__()
        self.conv = CondConv3d(in_channels, out_channels, 3, stride=stride, num_experts=arch.num_experts, location_dim=arch.location_dim)
        self.norm = nn.BatchNorm3d(out_channels) if arch.norm == "batch" else nn.GroupNorm(math.gcd(GROUPS, out_channels), out_channels)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x, location)))


class DrasclrEncoder(nn.Module):
    """Location-conditioned 3D CNN encoder.

    ``forward(x, location)`` gives the embedding ``h`` (N, embedding_dim);
    ``forward_features(x, location)`` gives the feature pyramid a U-Net decoder needs.
    ``location`` is (3,) for a batch sharing one landmark, or (G, 3) for G equal groups of
    consecutive samples (see :class:`CondConv3d`); an unconditioned encoder ignores it.
    """

    def __init__(self, architecture: EncoderArchitecture | None = None) -> None:
        super().__init__()
        arch = architecture or EncoderArchitecture()
        self.architecture = arch

        def layer(cin: int, cout: int, stride: int) -> ConvNormElu:
            return ConvNormElu(cin, cout, stride, arch)

        # Levels: each ends with the map kept as that resolution's feature (before the stride-2 conv).
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.levels.append(nn.ModuleList([layer(arch.in_channels, arch.stem_channels, 1)]))
        previous = arch.stem_channels
        self.downs.append(layer(previous, previous, 2))
        for width in arch.block_channels:
            convs = [layer(previous, width, 1)] + [layer(width, width, 1) for _ in range(arch.block_depth - 2)]
            self.levels.append(nn.ModuleList(convs))
            self.downs.append(layer(width, width, 2))
            previous = width
        self.levels.append(nn.ModuleList([layer(previous, arch.top_channels, 1)]))
        self.downs.append(layer(arch.top_channels, arch.embedding_dim, 2))

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the maps returned by :meth:`forward_features`, finest first."""
        arch = self.architecture
        return [arch.stem_channels, *arch.block_channels, arch.top_channels, arch.embedding_dim]

    @property
    def feature_strides(self) -> list[int]:
        """Down-sampling factor of each map of :meth:`forward_features` (1, 2, 4, ...)."""
        return [2**i for i in range(len(self.feature_channels))]

    def needs_batches(self, patch_size: int) -> bool:
        """Whether training-mode normalisation needs 2+ patches of ``patch_size``^3 voxels per step:
        BatchNorm does when the deepest map of one patch is a single voxel (one value per channel,
        nothing to normalise with); GroupNorm, which normalises each sample alone, never does."""
        return self.architecture.norm == "batch" and patch_size // self.feature_strides[-1] <= 1

    def forward_features(self, x: torch.Tensor, location: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps finest first: for a 32^3 input, sizes 32, 16, 8, 4, 2, 1.

        Map ``i`` is the last activation at stride ``2**i`` (the input of that level's stride-2
        convolution; the last map is the encoder output), i.e. the skip connections of a U-Net.
        """
        if not self.architecture.conditioned:
            location = x.new_zeros(self.architecture.location_dim)
        features = []
        for convs, down in zip(self.levels, self.downs):
            for conv in convs:
                x = conv(x, location)
            features.append(x)
            x = down(x, location)
        features.append(x)
        return features

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """Embedding ``h``: (N, C, D, H, W) -> (N, embedding_dim), global average of the last map."""
        return self.forward_features(x, location)[-1].mean(dim=(2, 3, 4))
