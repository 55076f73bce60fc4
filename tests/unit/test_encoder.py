"""DrasCLR encoder: layer layout, feature pyramid, parameter count, fully convolutional use, export."""

from __future__ import annotations

import json

import pytest
import torch

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models import (
    CondConv3d,
    DrasclrEncoder,
    EncoderArchitecture,
    IntensityWindow,
    ProjectionHead,
)
from drasclr_monailabel.models.export import load_encoder, read_metadata, save_encoder

TINY = EncoderArchitecture(stem_channels=2, block_channels=(4, 4, 8), top_channels=8, embedding_dim=8, num_experts=2)


def expected_parameter_count(arch: EncoderArchitecture) -> int:
    """Counted from the layer list: E experts x out x in x 27 + bias + routing (3E + E) + BN (2 out)."""
    layers = [(arch.in_channels, arch.stem_channels), (arch.stem_channels, arch.stem_channels)]
    previous = arch.stem_channels
    for width in arch.block_channels:
        layers += [(previous, width)] + [(width, width)] * (arch.block_depth - 1)
        previous = width
    layers += [(previous, arch.top_channels), (arch.top_channels, arch.embedding_dim)]
    e, d = arch.num_experts, arch.location_dim
    return sum(e * o * i * 27 + o + (d * e + e) + 2 * o for i, o in layers)


def test_default_encoder_has_13_conditional_convolutions_and_about_8_3_million_parameters() -> None:
    encoder = DrasclrEncoder()
    convs = [m for m in encoder.modules() if isinstance(m, CondConv3d)]
    assert len(convs) == 13
    assert [c.stride for c in convs].count(2) == 5
    count = sum(p.numel() for p in encoder.parameters())
    assert count == expected_parameter_count(encoder.architecture)
    assert 8.0e6 < count < 8.5e6


def test_feature_pyramid_of_a_32_cube() -> None:
    encoder = DrasclrEncoder(TINY).eval()
    x = torch.randn(3, 1, 32, 32, 32)
    features = encoder.forward_features(x, torch.zeros(3))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2, 1]
    assert [f.shape[1] for f in features] == encoder.feature_channels == [2, 4, 4, 8, 8, 8]
    assert encoder.feature_strides == [1, 2, 4, 8, 16, 32]
    embedding = encoder(x, torch.zeros(3))
    assert embedding.shape == (3, 8)
    torch.testing.assert_close(embedding, features[-1].flatten(1))


def test_larger_inputs_give_larger_maps_and_the_same_embedding_length() -> None:
    encoder = DrasclrEncoder(TINY).eval()
    x = torch.randn(2, 1, 64, 48, 40)
    features = encoder.forward_features(x, torch.zeros(3))
    assert features[0].shape[2:] == (64, 48, 40)
    assert features[-1].shape[2:] == (2, 2, 2)
    assert encoder(x, torch.zeros(3)).shape == (2, 8)


def test_shared_and_per_sample_locations_agree_and_location_matters() -> None:
    encoder = DrasclrEncoder(TINY).eval()
    x = torch.randn(4, 1, 32, 32, 32)
    location = torch.tensor([0.5, -0.2, 0.9])
    shared = encoder(x, location)
    per_sample = encoder(x, location.expand(4, 3))
    torch.testing.assert_close(shared, per_sample, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shared, encoder(x, -location))


def test_projection_head_shapes() -> None:
    head = ProjectionHead(8, 16, 4)
    assert head(torch.randn(5, 8)).shape == (5, 4)


def metadata_for(arch: EncoderArchitecture, atlas_id: str = "atlas-a") -> dict:
    return {"method": "drasclr", "architecture": arch.to_dict(), "atlas": {"id": atlas_id, "n_landmarks": 3},
            "intensity": IntensityWindow().to_dict(), "patch_size": 32, "embedding_dim": arch.embedding_dim}


def test_export_round_trip_loads_with_weights_only(tmp_path) -> None:
    encoder = DrasclrEncoder(TINY).eval()
    weights, meta = save_encoder(tmp_path, encoder.state_dict(), metadata_for(TINY))
    payload = torch.load(weights, weights_only=True)
    assert set(payload) == {"state_dict"}
    assert json.loads(meta.read_text())["format"] == "drasclr-encoder/1"
    loaded, metadata = load_encoder(tmp_path, expected_atlas_id="atlas-a", expected_intensity=IntensityWindow())
    x = torch.randn(2, 1, 32, 32, 32)
    torch.testing.assert_close(loaded(x, torch.zeros(3)), encoder(x, torch.zeros(3)))
    assert metadata["architecture"]["block_channels"] == [4, 4, 8]
    assert not loaded.training


def test_loader_refuses_mismatches_naming_the_file(tmp_path) -> None:
    save_encoder(tmp_path, DrasclrEncoder(TINY).state_dict(), metadata_for(TINY))
    with pytest.raises(InputError, match=r"encoder\.json.*atlas 'atlas-a', expected atlas 'other'"):
        load_encoder(tmp_path / "encoder.pt", expected_atlas_id="other")
    with pytest.raises(InputError, match=r"encoder\.json.*intensity window"):
        load_encoder(tmp_path, expected_intensity=IntensityWindow(clip_hu=(-1000.0, 400.0)))
    meta = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**meta, "format": "drasclr-encoder/0"}))
    with pytest.raises(InputError, match=r"encoder\.json: format is 'drasclr-encoder/0'"):
        read_metadata(tmp_path)


def test_loader_refuses_weights_of_another_architecture(tmp_path) -> None:
    other = EncoderArchitecture(stem_channels=3, block_channels=(4, 4, 8), top_channels=8, embedding_dim=8, num_experts=2)
    save_encoder(tmp_path, DrasclrEncoder(other).state_dict(), metadata_for(TINY))
    with pytest.raises(InputError, match=r"encoder\.pt: weights do not fit"):
        load_encoder(tmp_path)


def test_architecture_validation() -> None:
    with pytest.raises(ValueError, match="block_depth"):
        EncoderArchitecture(block_depth=1)
    with pytest.raises(ValueError, match="num_experts"):
        EncoderArchitecture(num_experts=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        EncoderArchitecture(norm="layer")


def test_group_norm_encoder_normalises_each_sample_on_its_own(tmp_path) -> None:
    arch = EncoderArchitecture(stem_channels=2, block_channels=(4, 4, 12), top_channels=16, embedding_dim=16, num_experts=2,
                               norm="group")
    encoder = DrasclrEncoder(arch).train()
    norms = [m for m in encoder.modules() if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.GroupNorm))]
    assert len(norms) == arch.num_convolutions and all(isinstance(m, torch.nn.GroupNorm) for m in norms)
    assert {m.num_groups for m in norms if m.num_channels == 12} == {4}  # the largest divisor of 12 up to 8 groups
    x = torch.randn(3, 1, 32, 32, 32)
    # Maps of stride 1-4 (8^3 voxels or more per group): a BatchNorm in training mode would differ.
    # The deepest maps hold a few values per group, where normalising amplifies rounding.
    alone = encoder.forward_features(x[:1], torch.zeros(3))[:3]
    batched = encoder.forward_features(x, torch.zeros(3))[:3]
    for one, many in zip(alone, batched):
        torch.testing.assert_close(one, many[:1], rtol=1e-4, atol=1e-4)
    save_encoder(tmp_path, encoder.state_dict(), metadata_for(arch))
    loaded, metadata = load_encoder(tmp_path)
    assert metadata["architecture"]["norm"] == "group"
    torch.testing.assert_close(loaded(x, torch.zeros(3)), encoder.eval()(x, torch.zeros(3)))


def test_encoders_exported_before_the_norm_option_load_with_batch_norm(tmp_path) -> None:
    meta = metadata_for(TINY)
    del meta["architecture"]["norm"]
    save_encoder(tmp_path, DrasclrEncoder(TINY).state_dict(), meta)
    loaded, _ = load_encoder(tmp_path)
    assert loaded.architecture.norm == "batch"


@pytest.mark.parametrize(("block_channels", "norm", "patch", "needs"), [
    ((4, 4, 8), "batch", 32, True),    # stride 32: one voxel per channel at the bottleneck
    ((4, 4, 8), "batch", 64, False),   # 2^3 voxels there
    ((4, 4, 8), "group", 32, False),
    ((4,), "batch", 32, False),        # stride 8: 4^3 voxels
])
def test_needs_batches_says_exactly_when_one_patch_cannot_train(block_channels, norm, patch, needs) -> None:
    arch = EncoderArchitecture(stem_channels=2, block_channels=block_channels, top_channels=8, embedding_dim=16, num_experts=2,
                               norm=norm)
    encoder = DrasclrEncoder(arch).train()
    assert encoder.needs_batches(patch) is needs
    one = torch.randn(1, 1, patch, patch, patch)
    if needs:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            encoder.forward_features(one, torch.zeros(3))
    else:
        assert torch.isfinite(encoder.forward_features(one, torch.zeros(3))[-1]).all()
