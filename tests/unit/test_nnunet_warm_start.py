"""Warm start from an exported encoder: the loaded / reshaped / skipped report and the refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder
from drasclr_monailabel.models.export import register_encoder_builder, save_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.nnunet.warm_start import transfer_state, warm_start_encoder
from tests.fixtures.nnunet import SMALL_ENCODER, TEST_ATLAS_ID, export_encoder


def test_matching_encoder_loads_every_tensor(exported_encoder) -> None:
    folder, source = exported_encoder
    torch.manual_seed(1)
    target = DrasclrEncoder(SMALL_ENCODER)
    report = warm_start_encoder(target, folder, expected_atlas_id=TEST_ATLAS_ID)
    assert len(report.loaded) == len(source.state_dict())
    assert not report.reshaped and not report.skipped and not report.not_in_export
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    assert report.lines()[0].endswith("keep their initialisation")
    assert f"loaded {len(report.loaded)}, reshaped 0, skipped 0" in report.lines()[0]


def test_one_axis_differences_are_reshaped_and_others_skipped(tmp_path) -> None:
    folder, source = export_encoder(tmp_path / "enc", replace(SMALL_ENCODER, num_experts=4))
    torch.manual_seed(1)
    target = DrasclrEncoder(SMALL_ENCODER)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = warm_start_encoder(target, folder)
    weight = "levels.0.0.conv.weight"
    assert any(entry.startswith(weight) for entry in report.reshaped)
    assert torch.equal(target.state_dict()[weight], source.state_dict()[weight][:2])
    router = [name for name in source.state_dict() if name.startswith("levels.0.0.conv.") and name not in (weight, "levels.0.0.conv.bias")]
    assert router and all(any(entry.startswith(name) for entry in report.reshaped) for name in router)
    assert any(name.endswith("norm.weight") for name in report.loaded)
    assert not torch.equal(target.state_dict()[weight], before[weight])


def test_transfer_skips_unknown_names_and_reports_missing_ones() -> None:
    target = DrasclrEncoder(SMALL_ENCODER)
    state = {k: v for k, v in target.state_dict().items() if not k.startswith("downs.")}
    state["projection.weight"] = torch.zeros(3, 3)
    report = transfer_state(target, state, "memory")
    assert report.skipped == ["projection.weight (not in the network)"]
    assert report.not_in_export and all(name.startswith("downs.") for name in report.not_in_export)
    assert any("not in the export" in line for line in report.lines())


def test_encoder_of_another_atlas_is_refused(exported_encoder) -> None:
    folder, _ = exported_encoder
    with pytest.raises(InputError, match="atlas 'test-atlas', expected atlas 'other'"):
        warm_start_encoder(DrasclrEncoder(SMALL_ENCODER), folder, expected_atlas_id="other")


def test_encoder_of_another_kind_is_refused(tmp_path) -> None:
    register_encoder_builder("toy_conv", lambda arguments: nn.Sequential(nn.Conv3d(1, arguments["width"], 3)))
    metadata = {"method": "other", "architecture": {"name": "toy_conv", "width": 2}, "atlas": {"id": TEST_ATLAS_ID},
                "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": 2}
    save_encoder(tmp_path / "toy", nn.Sequential(nn.Conv3d(1, 2, 3)).state_dict(), metadata)
    with pytest.raises(InputError, match="no weight of this encoder fits"):
        warm_start_encoder(DrasclrEncoder(SMALL_ENCODER), tmp_path / "toy")
