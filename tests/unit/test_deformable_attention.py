"""Deformable slice-axis attention and the volume transformer: they mix slices, follow each query's
own slice (no collapse to one sampling place), learn their offsets, and use positions and masks."""

from __future__ import annotations

import pytest
import torch

from drasclr_monailabel.models.deformable_attention import DeformableAttention1d, initial_offsets, sample_along_slices
from drasclr_monailabel.models.volume_transformer import (POSITION_ATLAS, POSITION_RELATIVE, VolumeTransformer,
                                                         VolumeTransformerArchitecture)


def _input_gradient(module: torch.nn.Module, tokens: torch.Tensor, query: int, **kwargs) -> torch.Tensor:
    """|d out[query] / d tokens[j]| summed over features, for every slice j: (S,)."""
    tokens = tokens.clone().requires_grad_(True)
    out = module(tokens, **kwargs)
    out[0, query].pow(2).sum().backward()
    return tokens.grad[0].abs().sum(dim=1)


def test_output_of_a_slice_depends_on_exactly_the_slices_it_samples() -> None:
    torch.manual_seed(0)
    attention = DeformableAttention1d(dim=16, heads=2, points=2)  # offsets +1, +2 and -1, -2 at start
    influence = _input_gradient(attention, torch.randn(1, 20, 16), query=10)
    assert set(torch.nonzero(influence > 1e-8).flatten().tolist()) == {8, 9, 11, 12}


def test_stacked_blocks_reach_far_slices() -> None:
    torch.manual_seed(0)
    transformer = VolumeTransformer(32, VolumeTransformerArchitecture(depth=4, heads=8, points=4))
    positions = torch.linspace(-1, 1, 64)[None]
    influence = _input_gradient(transformer, torch.randn(1, 64, 32), query=5, positions=positions,
                                kinds=torch.tensor([POSITION_RELATIVE]))
    assert influence[60] > 0 and influence[0] > 0  # 55 slices above and 5 below slice 5


def test_sampling_follows_each_query_and_outputs_vary_across_slices() -> None:
    torch.manual_seed(0)
    attention = DeformableAttention1d(dim=32, heads=4, points=3)
    torch.nn.init.normal_(attention.offsets.weight, std=0.5)  # content-dependent offsets, as after training
    tokens = torch.randn(2, 24, 32)
    with torch.no_grad():
        where = attention.sampling_positions(tokens)  # (B, S, H, P)
        out = attention(tokens)
    centre = where.mean(dim=(2, 3))
    # the sampling centre moves with the query slice (about one slice per slice), not a constant
    steps = (centre[:, 1:] - centre[:, :-1]).mean()
    assert 0.5 < float(steps) < 1.5
    spread = out.std(dim=1).mean() / out.std()
    assert spread > 0.5  # tokens of different slices differ as much as the output overall varies


def test_offsets_are_learned_through_the_interpolation() -> None:
    torch.manual_seed(0)
    attention = DeformableAttention1d(dim=16, heads=2, points=2)
    attention(torch.randn(2, 12, 16)).pow(2).sum().backward()
    assert attention.offsets.weight.grad.abs().sum() > 0
    assert attention.offsets.bias.grad.abs().sum() > 0


def test_linear_interpolation_and_fading_outside_the_volume() -> None:
    values = torch.arange(5, dtype=torch.float32).view(1, 1, 5, 1) + 1.0  # slices hold 1, 2, 3, 4, 5
    positions = torch.tensor([2.25, 0.0, -0.5, 4.5, 7.0, -3.0]).view(1, 1, 1, 6)
    sampled = sample_along_slices(values, positions).flatten()
    torch.testing.assert_close(sampled, torch.tensor([3.25, 1.0, 0.5, 2.5, 0.0, 0.0]))


def test_initial_offsets_pair_directions_and_dilations() -> None:
    offsets = initial_offsets(heads=6, points=2)
    torch.testing.assert_close(offsets, torch.tensor([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0], [-2.0, -4.0], [4.0, 8.0], [-4.0, -8.0]]))


def test_positions_kinds_and_mask_change_the_output_where_they_should() -> None:
    torch.manual_seed(0)
    transformer = VolumeTransformer(16, VolumeTransformerArchitecture(depth=2, heads=2, points=2)).eval()
    tokens = torch.randn(1, 10, 16)
    positions = torch.linspace(-1, 1, 10)[None]
    relative = torch.tensor([POSITION_RELATIVE])
    base = transformer(tokens, positions, relative)
    assert not torch.allclose(base, transformer(tokens, positions * 0.5, relative))
    assert not torch.allclose(base, transformer(tokens, positions, torch.tensor([POSITION_ATLAS])))
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 4] = True
    changed = tokens.clone()
    changed[0, 4] = 100.0
    torch.testing.assert_close(transformer(tokens, positions, relative, mask), transformer(changed, positions, relative, mask))


def test_dim_must_split_into_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DeformableAttention1d(dim=10, heads=4)
