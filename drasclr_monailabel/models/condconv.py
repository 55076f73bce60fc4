"""Conditional 3D convolution whose kernel depends on the anatomical location of the patch.

Each layer holds ``E`` expert kernels. A location (the landmark's normalised atlas coordinate,
3 numbers in about [-1, 1]) is routed to mixing weights ``sigmoid(Linear(3 -> E)(location))`` and
the kernel used for the patch is the weighted sum of the experts; the bias is shared. Routing
depends only on location, never on image content, so all patches taken at one landmark use the
same kernel.

That makes the per-sample Python loop of the original implementation unnecessary:

* the whole batch shares one location (a DrasCLR batch holds one landmark): mix one kernel and
  run one ordinary ``conv3d``;
* ``G`` equal groups of consecutive samples, each group sharing a location (``G == N``: every
  sample its own): mix ``G`` kernels and run one grouped convolution with the groups folded into
  the channel axis. Where a group has at most ``E`` output voxels in all (the 2^3 and 1^3 maps at
  the end of the encoder when every patch has its own location) the experts go first instead:
  one matrix product of all ``E`` experts with the patches' columns, then each sample's weighted
  sum. That costs ``E`` times a plain convolution, which on those maps is less than writing,
  reordering and reading back ``G`` mixed kernels of ``out * in * k^3`` numbers each;
* a grid of locations per sample, ``(N, 3, gz, gy, gx)``: the output map is split into
  ``gz x gy x gx`` equal blocks and each block uses its own location's kernel. Each block's input
  (with the kernel's halo, so receptive fields cross block borders exactly as in one convolution)
  becomes a sample of a grouped convolution. A window of several 32^3 landmark cells thus routes
  every cell by its own location, at every depth of the encoder. A layer with one input channel
  (the stem, on the CT) convolves block by block instead: PyTorch's CPU grouped convolution with
  one input channel per group took 1.9x (bfloat16) to 2.7x (float32) the time of the
  block-by-block plain convolutions on two 64^3 windows, while from 8 channels on the grouped
  convolution is as fast or faster (benchmarks/block_routing.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from itertools import product

import torch
import torch.nn.functional as F
from torch import nn


BLOCK_BY_BLOCK_MAX_IN_CHANNELS = 1
"""With a grid of locations, layers with at most this many input channels convolve block by block."""


class CondConv3d(nn.Module):
    """Location-conditioned 3D convolution (CondConv with location routing).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel edge (voxels).
        stride: stride (same on every axis).
        padding: zero padding; default ``kernel_size // 2`` keeps the size at stride 1.
        num_experts: number of expert kernels ``E``.
        location_dim: length of the location vector (3: normalised atlas x, y, z).
        bias: add a learned bias shared by all experts.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        num_experts: int = 8,
        location_dim: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.num_experts = num_experts
        self.location_dim = location_dim
        self.weight = nn.Parameter(torch.empty(num_experts, out_channels, in_channels, kernel_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.routing = nn.Linear(location_dim, num_experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert like an ordinary ``nn.Conv3d`` of the same shape."""
        fan_in = self.in_channels * self.kernel_size**3
        for expert in self.weight:
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        self.routing.reset_parameters()

    def routing_weights(self, location: torch.Tensor) -> torch.Tensor:
        """Mixing weights in (0, 1): ``(G, 3) -> (G, E)``."""
        return torch.sigmoid(self.routing(location))

    def mixed_kernels(self, location: torch.Tensor) -> torch.Tensor:
        """One kernel per location: ``(G, 3) -> (G, out, in, k, k, k)``."""
        weights = self.routing_weights(location).to(self.weight.dtype)
        # One (G, E) x (E, out*in*k^3) matrix product on a view of the experts: no copies.
        return torch.mm(weights, self.weight.view(self.num_experts, -1)).view(-1, *self.weight.shape[1:])

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (N, in, D, H, W) with the kernels of ``location``.

        Args:
            x: input batch, samples ordered group by group.
            location: ``(3,)`` or ``(1, 3)`` for a batch sharing one location, ``(G, 3)`` for
                ``G`` equal groups of ``N / G`` consecutive samples (``G == N``: one per sample),
                or ``(N, 3, gz, gy, gx)``: one location per block of the output map (each output
                edge a multiple of its block count).

        Returns:
            (N, out, D', H', W').
        """
        if location.dim() == 5:
            return self._forward_blocks(x, location)
        return self._forward_groups(x, _as_groups(location, x.shape[0]), self.padding)

    def _forward_groups(self, x: torch.Tensor, location: torch.Tensor, padding: int) -> torch.Tensor:
        """``location`` (G, 3): G equal groups of consecutive samples, each with its own kernel."""
        groups = location.shape[0]
        out_voxels = math.prod((s + 2 * padding - self.kernel_size) // self.stride + 1 for s in x.shape[2:])
        if groups > 1 and out_voxels * (x.shape[0] // groups) <= self.num_experts:
            return self._forward_experts_first(x, location, padding)
        kernels = self.mixed_kernels(location.to(self.routing.weight.dtype))
        if groups == 1:
            return F.conv3d(x, kernels[0].to(x.dtype), _cast(self.bias, x), self.stride, padding)
        per_group = x.shape[0] // groups
        folded = _fold_groups(x, groups, per_group)
        weight = kernels.reshape(groups * self.out_channels, self.in_channels, *kernels.shape[-3:]).to(x.dtype)
        bias = None if self.bias is None else _cast(self.bias, x).repeat(groups)
        out = F.conv3d(folded, weight, bias, self.stride, padding, groups=groups)
        return _unfold_groups(out, groups, per_group)

    def _forward_experts_first(self, x: torch.Tensor, location: torch.Tensor, padding: int) -> torch.Tensor:
        """Every expert on every sample, then each group's routing-weighted sum of the E outputs.

        ``x`` (N, in, D, H, W), ``location`` (G, 3) -> (N, out, D', H', W'); equal to convolving
        with the mixed kernel because the convolution is linear in its kernel.
        """
        groups, batch = location.shape[0], x.shape[0]
        weights = self.routing_weights(location.to(self.routing.weight.dtype)).to(x.dtype)  # (G, E)
        columns, size = _im2col(x, self.kernel_size, self.stride, padding)  # (N, in * k^3, L)
        # One (E * out, in * k^3) x (in * k^3, N * L) product: a batched matmul would first copy the
        # experts' kernels once per sample (16 x 3.5 M numbers at 128 -> 128 channels)
        length = columns.shape[2]
        columns = columns.transpose(0, 1).reshape(columns.shape[1], batch * length)
        experts = torch.mm(self.weight.view(self.num_experts * self.out_channels, -1).to(x.dtype), columns)  # (E * out, N * L)
        experts = experts.view(self.num_experts, self.out_channels, groups, batch // groups, length).permute(2, 3, 0, 1, 4)
        out = torch.einsum("ge,gneol->gnol", weights, experts).reshape(batch, self.out_channels, *size)
        return out if self.bias is None else out + _cast(self.bias, x).view(-1, 1, 1, 1)

    def _forward_blocks(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """One location per output block: ``x`` (N, in, D, H, W), ``grid`` (N, 3, gz, gy, gx).

        Block ``(i, j, k)`` of the output is computed from its own input span (block plus the
        kernel's halo, cut from the zero-padded input), so every output voxel equals that of one
        ordinary convolution with its block's kernel.
        """
        blocks = tuple(grid.shape[2:])
        if grid.shape[:2] != (x.shape[0], self.location_dim):
            raise ValueError(f"location grid must be (N={x.shape[0]}, {self.location_dim}, gz, gy, gx), got {tuple(grid.shape)}")
        out_size = [(s + 2 * self.padding - self.kernel_size) // self.stride + 1 for s in x.shape[2:]]
        if any(size % count for size, count in zip(out_size, blocks)):
            raise ValueError(f"location grid {blocks} does not divide the output map {tuple(out_size)}")
        tile = [size // count for size, count in zip(out_size, blocks)]
        span = [(t - 1) * self.stride + self.kernel_size for t in tile]
        padded = F.pad(x, (self.padding,) * 6)
        indices = list(product(*(range(count) for count in blocks)))  # blocks in C order
        inputs = [tuple(slice(i * t * self.stride, i * t * self.stride + s) for i, t, s in zip(index, tile, span)) for index in indices]
        locations = grid.flatten(2).transpose(1, 2).reshape(-1, self.location_dim)  # (N * B, 3), sample by sample
        if self.in_channels <= BLOCK_BY_BLOCK_MAX_IN_CHANNELS:
            outputs = [tuple(slice(i * t, (i + 1) * t) for i, t in zip(index, tile)) for index in indices]
            return self._blocks_one_by_one(padded, locations, inputs, outputs, out_size)
        stacked = torch.stack([padded[(slice(None), slice(None), *box)] for box in inputs], dim=1).flatten(0, 1)  # (N * B, in, span...)
        out = self._forward_groups(stacked, locations, padding=0)  # (N * B, out, tile...)
        n, channels = x.shape[0], out.shape[1]
        out = out.view(n, *blocks, channels, *tile).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(n, channels, *out_size)

    def _blocks_one_by_one(self, padded: torch.Tensor, locations: torch.Tensor, inputs: list[tuple[slice, ...]],
                           outputs: list[tuple[slice, ...]], out_size: list[int]) -> torch.Tensor:
        """One plain convolution per sample and block, written into its part of the output map.

        ``padded`` (N, in, ...) the zero-padded input, ``locations`` (N * B, 3) sample by sample,
        ``inputs`` / ``outputs`` the B blocks' spans in ``padded`` and in the output map.
        """
        kernels = self.mixed_kernels(locations.to(self.routing.weight.dtype)).to(padded.dtype)
        bias = _cast(self.bias, padded)
        out: torch.Tensor | None = None
        for index, (sample, (source, target)) in enumerate(product(range(padded.shape[0]), zip(inputs, outputs))):
            part = F.conv3d(padded[(slice(sample, sample + 1), slice(None), *source)], kernels[index], bias, self.stride)
            if out is None:  # the convolution's dtype: under autocast not the input's
                out = part.new_empty(padded.shape[0], self.out_channels, *out_size)
            out[(slice(sample, sample + 1), slice(None), *target)] = part
        return out

    def forward_per_sample(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """The original formulation: a Python loop with one mixed kernel and one conv per sample.

        Kept as the reference that tests check the batched paths against and that
        ``benchmarks/encoder.py`` times; ``location`` is (N, 3).
        """
        outputs = []
        for sample, loc in zip(x, location):
            kernel = self.mixed_kernels(loc[None])[0].to(x.dtype)
            outputs.append(F.conv3d(sample[None], kernel, _cast(self.bias, x), self.stride, self.padding))
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, num_experts={self.num_experts}, bias={self.bias is not None}")


def _as_groups(location: torch.Tensor, batch: int) -> torch.Tensor:
    """Check the location shape against the batch; return it as (G, 3)."""
    if location.dim() == 1:
        location = location[None]
    if location.dim() != 2 or location.shape[0] == 0 or batch % location.shape[0] != 0:
        raise ValueError(f"location must be (3,) or (G, 3) with G dividing the batch size {batch}, got {tuple(location.shape)}")
    return location


def _im2col(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> tuple[torch.Tensor, list[int]]:
    """Receptive fields as columns: (N, C, D, H, W) -> (N, C * k^3, L) and the output size (3 ints).

    Row ``c * k^3 + tap`` (taps in C order, as in a weight's flattening), column = output voxel.
    One ``index_select`` on the zero-padded input, so the backward is one ``index_add``.
    """
    padded = F.pad(x, (padding,) * 6)
    dims = padded.shape[2:]
    size = [(d - kernel_size) // stride + 1 for d in dims]
    taps = torch.arange(kernel_size, device=x.device)
    starts = [torch.arange(n, device=x.device) * stride for n in size]
    index = _flat_offsets([taps] * 3, dims)[:, None] + _flat_offsets(starts, dims)[None, :]  # (k^3, L)
    columns = padded.flatten(2).index_select(2, index.flatten())
    return columns.view(x.shape[0], -1, index.shape[1]), size


def _flat_offsets(axes: list[torch.Tensor], dims: torch.Size) -> torch.Tensor:
    """Flat C-order offsets in an array of shape ``dims`` of the grid ``axes[0] x axes[1] x axes[2]``."""
    return ((axes[0][:, None, None] * dims[1] + axes[1][None, :, None]) * dims[2] + axes[2][None, None, :]).flatten()


def _cast(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias.to(x.dtype)


def _fold_groups(x: torch.Tensor, groups: int, per_group: int) -> torch.Tensor:
    """(G*b, C, ...) -> (b, G*C, ...): group g's samples become channel block g."""
    channels, spatial = x.shape[1], x.shape[2:]
    return x.reshape(groups, per_group, channels, *spatial).transpose(0, 1).reshape(per_group, groups * channels, *spatial)


def _unfold_groups(y: torch.Tensor, groups: int, per_group: int) -> torch.Tensor:
    """Inverse of :func:`_fold_groups` for the output channels."""
    channels, spatial = y.shape[1] // groups, y.shape[2:]
    return y.reshape(per_group, groups, channels, *spatial).transpose(0, 1).reshape(groups * per_group, channels, *spatial)
