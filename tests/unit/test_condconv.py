"""CondConv3d: the batched paths (one shared location, grouped locations, experts first) equal the per-sample loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from drasclr_monailabel.models.condconv import CondConv3d


def naive_reference(conv: CondConv3d, x: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Written out from the definition: kernel_n = sum_e sigmoid(W_r loc_n + b_r)_e * expert_e."""
    outputs = []
    for sample, loc in zip(x, locations):
        mix = torch.sigmoid(conv.routing.weight @ loc + conv.routing.bias)
        kernel = sum(mix[e] * conv.weight[e] for e in range(conv.num_experts))
        outputs.append(F.conv3d(sample[None], kernel, conv.bias, conv.stride, conv.padding))
    return torch.cat(outputs)


def gradients(conv: CondConv3d, x: torch.Tensor, output: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    params = [x, conv.weight, conv.bias, conv.routing.weight, conv.routing.bias]
    return list(torch.autograd.grad(output, params, upstream))


def make(stride: int = 1, experts: int = 4, seed: int = 0) -> tuple[CondConv3d, torch.Tensor]:
    torch.manual_seed(seed)
    conv = CondConv3d(3, 5, 3, stride=stride, num_experts=experts).double()
    x = torch.randn(6, 3, 9, 8, 7, dtype=torch.float64, requires_grad=True)
    return conv, x


@pytest.mark.parametrize("stride", [1, 2])
def test_shared_location_path_equals_per_sample_reference(stride: int) -> None:
    conv, x = make(stride)
    location = torch.tensor([0.3, -0.7, 0.1], dtype=torch.float64)
    fast = conv(x, location)
    slow = naive_reference(conv, x, location.expand(x.shape[0], 3))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(fast)
    for a, b in zip(gradients(conv, x, fast, upstream), gradients(conv, x, slow, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [6, 3, 2])
def test_grouped_path_equals_per_sample_reference(groups: int) -> None:
    conv, x = make(stride=2)
    group_locations = torch.randn(groups, 3, dtype=torch.float64)
    per_sample = group_locations.repeat_interleave(x.shape[0] // groups, dim=0)
    fast = conv(x, group_locations)
    slow = naive_reference(conv, x, per_sample)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(fast)
    for a, b in zip(gradients(conv, x, fast, upstream), gradients(conv, x, slow, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def assert_equals_reference(conv: CondConv3d, x: torch.Tensor, fast: torch.Tensor, per_sample: torch.Tensor) -> None:
    """Output and gradients (input, experts, bias, routing) equal those of :func:`naive_reference`."""
    slow = naive_reference(conv, x, per_sample)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(fast)
    for a, b in zip(gradients(conv, x, fast, upstream), gradients(conv, x, slow, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("stride", "groups"), [(1, 6), (2, 6), (2, 3), (1, 1)])
def test_experts_first_equals_per_sample_reference(stride: int, groups: int) -> None:
    """The experts-first formulation on any map size (here one the dispatcher would not give it)."""
    conv, x = make(stride)
    group_locations = torch.randn(groups, 3, dtype=torch.float64)
    fast = conv._forward_experts_first(x, group_locations, conv.padding)
    assert_equals_reference(conv, x, fast, group_locations.repeat_interleave(x.shape[0] // groups, dim=0))


@pytest.mark.parametrize(("size", "stride", "groups"), [((2, 2, 2), 2, 6), ((2, 2, 2), 2, 2), ((2, 1, 2), 1, 6), ((3, 3, 3), 3, 3)])
def test_small_maps_take_the_experts_first_path(monkeypatch: pytest.MonkeyPatch, size: tuple[int, int, int], stride: int,
                                                groups: int) -> None:
    """At most E output voxels per group: experts first, with outputs and gradients of the definition."""
    torch.manual_seed(2)
    conv = CondConv3d(3, 5, 3, stride=stride, num_experts=4).double()
    x = torch.randn(6, 3, *size, dtype=torch.float64, requires_grad=True)
    calls = []
    experts_first = conv._forward_experts_first
    monkeypatch.setattr(conv, "_forward_experts_first", lambda *args: calls.append(args[0].shape) or experts_first(*args))
    group_locations = torch.randn(groups, 3, dtype=torch.float64)
    fast = conv(x, group_locations)
    assert calls
    assert_equals_reference(conv, x, fast, group_locations.repeat_interleave(x.shape[0] // groups, dim=0))


def test_forward_per_sample_matches_batched_paths() -> None:
    conv, x = make()
    locations = torch.randn(x.shape[0], 3, dtype=torch.float64)
    torch.testing.assert_close(conv.forward_per_sample(x, locations), conv(x, locations), rtol=1e-10, atol=1e-10)


def test_routing_depends_on_location_only() -> None:
    conv, x = make()
    a, b = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert not torch.allclose(conv(x, a), conv(x, b))
    weights = conv.routing_weights(torch.stack([a, b]))
    assert weights.shape == (2, 4) and bool(((weights > 0) & (weights < 1)).all())


@pytest.mark.parametrize("shape", [(4, 3), (2, 2, 3), (0, 3)])
def test_location_shape_that_does_not_divide_the_batch_is_refused(shape: tuple[int, ...]) -> None:
    conv, x = make()
    with pytest.raises(ValueError, match="location"):
        conv(x, torch.zeros(shape, dtype=torch.float64))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("in_channels", [3, 1])  # grouped convolution; block by block (one input channel)
def test_block_grid_gives_each_block_the_output_of_its_own_kernel(stride: int, in_channels: int) -> None:
    torch.manual_seed(1)
    conv = CondConv3d(in_channels, 5, 3, stride=stride, num_experts=4).double()
    x = torch.randn(2, in_channels, 8, 8, 12, dtype=torch.float64, requires_grad=True)
    grid = torch.randn(2, 3, 2, 1, 3, dtype=torch.float64)
    out = conv(x, grid)
    tile = [s // stride // c for s, c in zip(x.shape[2:], grid.shape[2:])]
    for n in range(2):
        for i in range(2):
            for k in range(3):
                whole = conv(x[n:n + 1], grid[n, :, i, 0, k])  # the whole map with this block's kernel
                block = (slice(None), slice(i * tile[0], (i + 1) * tile[0]), slice(None), slice(k * tile[2], (k + 1) * tile[2]))
                torch.testing.assert_close(out[n][block], whole[0][block], rtol=1e-10, atol=1e-10)
    shared = grid[:, :, :1, :1, :1].expand_as(grid)
    torch.testing.assert_close(conv(x, shared), conv(x, grid[:, :, 0, 0, 0]), rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(out)
    grad_blocks = torch.autograd.grad(conv(x, shared), [x, conv.weight], upstream)
    grad_groups = torch.autograd.grad(conv(x, grid[:, :, 0, 0, 0]), [x, conv.weight], upstream)
    for a, b in zip(grad_blocks, grad_groups):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_block_grid_that_does_not_divide_the_map_is_refused() -> None:
    conv, x = make()
    with pytest.raises(ValueError, match="does not divide"):
        conv(x, torch.zeros(x.shape[0], 3, 2, 2, 2, dtype=torch.float64))
