"""Slice encoder (torchvision ResNet layouts, one-channel stem, multi-scale token), clustering heads
and the exported joint encoder's round trip through encoder.pt / encoder.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.export import load_encoder, save_encoder
from drasclr_monailabel.models.slice_encoder import SliceEncoder, SliceEncoderArchitecture
from drasclr_monailabel.models.volume_transformer import VolumeTransformerArchitecture
from drasclr_monailabel.ssl.joint2d3d.network import ClusteringHead, Joint2d3dEncoder


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("depth", "builder"), [(18, torchvision.models.resnet18), (50, torchvision.models.resnet50)])
def test_full_width_trunk_is_torchvisions_resnet(depth: int, builder) -> None:
    ours = SliceEncoder(SliceEncoderArchitecture(depth=depth, width=64, embedding_dim=8))
    reference = builder(weights=None)
    for mine, theirs in zip(ours.stages, [reference.layer1, reference.layer2, reference.layer3, reference.layer4], strict=True):
        assert [tuple(p.shape) for p in mine.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    stem = _count(reference.conv1) // 3 + _count(reference.bn1)  # one input channel instead of three
    assert _count(ours.stem) == stem
    assert ours.stage_channels == ((64, 128, 256, 512) if depth == 18 else (256, 512, 1024, 2048))


def test_features_of_one_channel_slices() -> None:
    encoder = SliceEncoder(SliceEncoderArchitecture(depth=18, width=8, embedding_dim=24)).eval()
    features = encoder(torch.randn(3, 1, 48, 48))
    assert features.pooled.shape == (3, 64) and features.token.shape == (3, 24)
    multi = encoder.multi_scale(torch.randn(2, 1, 40, 40))
    assert multi.shape == (2, 8 + 16 + 32 + 64)
    torch.testing.assert_close(multi[:, :8].norm(dim=1), torch.ones(2))  # every stage pool is unit length


def test_clustering_head_scores_with_unit_prototypes_and_can_freeze_them() -> None:
    head = ClusteringHead(in_dim=10, hidden=16, out_dim=6, prototypes=5, heads=2, learned=True)
    z, scores = head(torch.randn(4, 10), frozen=True)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert len(scores) == 2 and scores[0].shape == (4, 5) and float(scores[0].detach().abs().max()) <= 1.0 + 1e-5
    scores[0].sum().backward()
    assert head.prototypes[0].weight.grad is None  # frozen: no gradient reaches the prototypes
    _, scores = head(torch.randn(4, 10))
    scores[0].sum().backward()
    assert head.prototypes[0].weight.grad is not None


def test_exported_encoder_loads_back_with_its_architecture(tmp_path: Path) -> None:
    encoder = Joint2d3dEncoder(SliceEncoderArchitecture(depth=18, width=8, embedding_dim=16),
                               VolumeTransformerArchitecture(depth=1, heads=2, points=2)).eval()
    save_encoder(tmp_path, encoder.state_dict(), {"method": "joint2d3d", "architecture": encoder.architecture(), "atlas": {"id": None},
                                                  "intensity": {"clip_hu": [-1024, 240], "offset": 1024, "divisor": 632, "shift": -1},
                                                  "patch_size": 32, "embedding_dim": 16})
    loaded, metadata = load_encoder(tmp_path, expected_method="joint2d3d")
    slices = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded.embed_slices(slices), encoder.embed_slices(slices))
    with pytest.raises(InputError, match="expected 'drasclr'"):
        load_encoder(tmp_path, expected_method="drasclr")
