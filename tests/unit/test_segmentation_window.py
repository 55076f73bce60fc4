"""Training and inference under one routing: every 32^3 block of a 64^3 inference window is routed
by the location a 32^3 fine-tuning patch there gets; the checkpoint records the routing block, and
windows or patches that are not made of whole blocks are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.segmentation import inference
from drasclr_monailabel.segmentation.checkpoint import build_model, load_checkpoint, save_checkpoint
from drasclr_monailabel.segmentation.inference import WINDOW, window_probabilities, windows_per_pass
from drasclr_monailabel.segmentation.network import ROUTING_BLOCK, EmphysemaUNet, window_locations
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune

SMALL = EncoderArchitecture(stem_channels=4, block_channels=(8, 8, 16), top_channels=16, embedding_dim=16, num_experts=2)


def _small_model(**kwargs) -> EmphysemaUNet:
    return EmphysemaUNet(DrasclrEncoder(SMALL), num_classes=2, dropout=0.0, **kwargs)


def test_every_block_of_a_window_gets_the_location_of_a_training_patch_there() -> None:
    assert FinetuneConfig().patch_size == ROUTING_BLOCK == 32 and WINDOW == 64
    torch.manual_seed(0)
    x = torch.randn(2, 4, 64, 64, 64)
    grid = window_locations(x, ROUTING_BLOCK)
    assert grid.shape == (2, 3, 2, 2, 2)
    for i, j, k in [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 0)]:
        patch = x[:, :, 32 * i: 32 * i + 32, 32 * j: 32 * j + 32, 32 * k: 32 * k + 32]  # a fine-tuning patch
        torch.testing.assert_close(grid[:, :, i, j, k], window_locations(patch, ROUTING_BLOCK))


def test_block_routing_equals_window_routing_where_the_blocks_agree_and_differs_where_not() -> None:
    torch.manual_seed(0)
    per_window = _small_model().eval()
    per_block = _small_model(routing_block=32).eval()
    per_block.load_state_dict(per_window.state_dict())
    x = torch.randn(2, 4, 64, 64, 64)
    x[:, 1:] = torch.tensor([0.2, -0.4, 0.6])[None, :, None, None, None]
    with torch.no_grad():
        torch.testing.assert_close(per_block(x), per_window(x), rtol=1e-4, atol=1e-5)
        x[:, 1:, :32] = -0.8  # the upper half of every window lies elsewhere in the atlas
        assert not torch.allclose(per_block(x), per_window(x), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        _small_model(routing_block=16)


def test_checkpoint_keeps_the_routing_block_and_inference_runs_64_windows(tmp_path: Path, monkeypatch, prepared_phantom) -> None:
    model, info = build_model(["emphysema"])
    assert model.routing_block == ROUTING_BLOCK and info["meta"]["routing_block"] == ROUTING_BLOCK
    loaded, meta = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt", info["meta"]))
    assert meta["routing_block"] == ROUTING_BLOCK and loaded.routing_block == ROUTING_BLOCK
    seen = []

    def spy(inputs, roi_size, sw_batch_size, predictor, **kwargs):
        seen.append((tuple(roi_size), sw_batch_size))
        return inputs.new_zeros((1, 2, *inputs.shape[2:]))

    monkeypatch.setattr(inference, "sliding_window_inference", spy)
    window_probabilities(loaded, prepared_phantom, "cpu", False, WINDOW, 0.0, None)
    assert seen == [((64, 64, 64), 2)] and windows_per_pass(32) == 16
    with pytest.raises(ValueError, match="window 48 must be a multiple of 32, the model's routing block"):
        window_probabilities(loaded, prepared_phantom, "cpu", False, 48, 0.0, None)
    loaded.routing_block = 64  # a model fine-tuned with 64^3 blocks cannot run 32^3 windows
    with pytest.raises(ValueError, match="window 32 must be a multiple of 64"):
        window_probabilities(loaded, prepared_phantom, "cpu", False, 32, 0.0, None)


def test_a_checkpoint_without_a_recorded_routing_block_routes_per_32_block(tmp_path: Path) -> None:
    model, info = build_model(["emphysema"])
    old_meta = {k: v for k, v in info["meta"].items() if k != "routing_block"}  # fine-tuned on 32^3 patches
    torch.save({"model": model.state_dict(), "meta": old_meta}, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.routing_block == 32


def test_finetune_refuses_patches_that_are_not_whole_routing_blocks(prepared_phantom) -> None:
    model = _small_model(routing_block=64)
    with pytest.raises(ValueError, match="patch_size 32 must be a multiple of 64, the model's routing block"):
        finetune(model, [prepared_phantom], FinetuneConfig(max_epochs=1, steps_per_epoch=1, batch_size=2), pretrained=False)
