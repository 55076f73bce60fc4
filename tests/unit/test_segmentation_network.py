"""The segmentation network: shapes, location routing from the coordinate channels, deep
supervision, dropout for MC uncertainty, and pretrained-encoder loading."""

from __future__ import annotations

import pytest
import torch

from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.segmentation.network import EmphysemaUNet, window_locations

SMALL = EncoderArchitecture(stem_channels=4, block_channels=(8, 8, 16), top_channels=16, embedding_dim=16, num_experts=2)


def _input(batch: int, size: int, locations: torch.Tensor) -> torch.Tensor:
    x = torch.randn(batch, 4, size, size, size)
    x[:, 1:] = locations[:, :, None, None, None]
    return x


def test_output_shape_and_deep_supervision() -> None:
    torch.manual_seed(0)
    x = _input(2, 64, torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.5]]))
    model = EmphysemaUNet(DrasclrEncoder(SMALL), num_classes=4).eval()
    assert model(x).shape == (2, 4, 64, 64, 64)
    model.deep_supervision = True
    outputs = model(x)
    assert [o.shape[-1] for o in outputs] == [64, 32, 16, 8, 4]
    assert all(o.shape[:2] == (2, 4) for o in outputs)


def test_location_is_read_at_the_window_centre() -> None:
    x = torch.zeros(2, 4, 32, 32, 32)
    x[0, 1:, 16, 16, 16] = torch.tensor([0.3, -0.2, 0.9])
    x[1, 1:, 16, 16, 16] = torch.tensor([-0.7, 0.1, 0.0])
    torch.testing.assert_close(window_locations(x), torch.tensor([[0.3, -0.2, 0.9], [-0.7, 0.1, 0.0]]))
    shared = _input(3, 32, torch.tensor([[0.3, -0.2, 0.9]] * 3))
    assert window_locations(shared).shape == (3,)


def test_location_changes_the_prediction() -> None:
    torch.manual_seed(0)
    model = EmphysemaUNet(DrasclrEncoder(SMALL), num_classes=2).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    here = torch.cat([image, torch.full((1, 3, 32, 32, 32), 0.5)], dim=1)
    there = torch.cat([image, torch.full((1, 3, 32, 32, 32), -0.5)], dim=1)
    assert not torch.allclose(model(here), model(there))


def test_mc_dropout_varies_only_when_enabled() -> None:
    torch.manual_seed(0)
    model = EmphysemaUNet(DrasclrEncoder(SMALL), num_classes=2, dropout=0.5).eval()
    x = _input(1, 32, torch.tensor([[0.0, 0.0, 0.0]]))
    torch.testing.assert_close(model(x), model(x))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout3d):
            module.train()
    assert not torch.allclose(model(x), model(x))


def test_wrong_channel_count_is_refused() -> None:
    model = EmphysemaUNet(DrasclrEncoder(SMALL), num_classes=2)
    with pytest.raises(ValueError, match="needs 4 channels"):
        model(torch.zeros(1, 1, 32, 32, 32))
