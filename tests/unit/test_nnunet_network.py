"""The DrasCLR network inside nnU-Net: undoing nnU-Net's CT normalisation, coordinates, deep
supervision, and the plans adaptation (architecture, patch size, refusals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.nnunet.network import (
    NETWORK_CLASS_NAME,
    DrasclrNnunetNetwork,
    output_strides,
)
from drasclr_monailabel.nnunet.plans import DEFAULT_LOCATION, adapt_plans
from tests.fixtures.nnunet import SMALL_ENCODER, dataset_json, nnunet_plans


def _network(channels: int, deep_supervision: bool = False, mean: float = -950.0, std: float = 40.0) -> DrasclrNnunetNetwork:
    torch.manual_seed(0)
    return DrasclrNnunetNetwork(channels, 2, SMALL_ENCODER.to_dict(), hu_scale=std, hu_offset=mean,
                                intensity=LUNG_WINDOW.to_dict(), deep_supervision=deep_supervision).eval()


def _ct_normalised(hu: np.ndarray, mean: float, std: float, low: float, high: float) -> np.ndarray:
    """What nnU-Net's CTNormalization does to channel 0."""
    return ((np.clip(hu, low, high) - mean) / std).astype(np.float32)


def test_channel_zero_is_mapped_back_to_the_lung_window() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1024, -820, size=(1, 1, 32, 32, 32)).astype(np.float32)
    network = _network(1)
    x = torch.from_numpy(_ct_normalised(hu, -950.0, 40.0, -1024.0, -820.0))
    image = network.network_input(x)[:, :1]
    torch.testing.assert_close(image, LUNG_WINDOW(torch.from_numpy(hu)), atol=1e-5, rtol=0)


def test_coordinates_pass_through_and_a_constant_location_fills_in() -> None:
    x = torch.zeros(2, 4, 32, 32, 32)
    x[:, 1] = torch.linspace(-1, 1, 32)[None, None, None, :]
    assert torch.equal(_network(4).network_input(x)[:, 1:], x[:, 1:])
    constant = _network(1).network_input(x[:, :1])[:, 1:]
    assert constant.shape == (2, 3, 32, 32, 32)
    assert torch.equal(constant, torch.zeros_like(constant))


def test_deep_supervision_outputs_match_the_output_strides() -> None:
    network = _network(4, deep_supervision=True)
    with torch.no_grad():
        outputs = network(torch.randn(1, 4, 64, 32, 32))
    assert [o.shape[2:] for o in outputs] == [(64 // s, 32 // s, 32 // s) for s in output_strides(SMALL_ENCODER)]
    network.deep_supervision = False
    with torch.no_grad():
        assert network(torch.randn(1, 4, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_network_refuses_patches_that_are_not_multiples_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        _network(1)(torch.zeros(1, 1, 48, 32, 32))


def test_adapt_plans_builds_our_network_and_rounds_the_patch_down() -> None:
    plans = nnunet_plans()
    adapted, notes = adapt_plans(plans, "3d_fullres", dataset_json(4), SMALL_ENCODER)
    config = adapted["configurations"]["3d_fullres"]
    assert config["patch_size"] == [64, 192, 160]
    assert config["architecture"]["network_class_name"] == NETWORK_CLASS_NAME
    kwargs = config["architecture"]["arch_kwargs"]
    assert (kwargs["hu_scale"], kwargs["hu_offset"]) == (40.0, -950.0)
    assert kwargs["location"] == list(DEFAULT_LOCATION)
    assert any("[80, 192, 160] -> [64, 192, 160]" in note for note in notes)
    assert plans == nnunet_plans(), "the caller's plans must not change"
    network = DrasclrNnunetNetwork(4, 2, **kwargs)
    assert network.encoder.architecture == SMALL_ENCODER


def test_adapt_plans_resolves_inheritance_and_keeps_small_patches_at_32() -> None:
    adapted, _ = adapt_plans(nnunet_plans(), "3d_child", dataset_json(1), SMALL_ENCODER)
    config = adapted["configurations"]["3d_child"]
    assert config["patch_size"] == [32, 32, 32]
    assert config["spacing"] == [1.0, 1.0, 1.0]
    assert "inherits_from" not in config


def test_adapt_plans_undoes_no_normalisation_as_identity() -> None:
    plans = nnunet_plans()
    plans["configurations"]["3d_fullres"]["normalization_schemes"][0] = "NoNormalization"
    kwargs = adapt_plans(plans, "3d_fullres", dataset_json(4), SMALL_ENCODER)[0]["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert (kwargs["hu_scale"], kwargs["hu_offset"]) == (1.0, 0.0)


@pytest.mark.parametrize("change, message", [
    (lambda p, d: None, "3D configuration"),
    (lambda p, d: d["channel_names"].update({"4": "noNorm"}), "5 channels"),
    (lambda p, d: p["configurations"]["3d_fullres"]["normalization_schemes"].__setitem__(0, "ZScoreNormalization"),
     "ZScoreNormalization"),
    (lambda p, d: p["configurations"]["3d_fullres"]["normalization_schemes"].__setitem__(2, "CTNormalization"),
     "atlas coordinates"),
])
def test_adapt_plans_refuses_what_the_network_cannot_take(change, message) -> None:
    plans, dataset = nnunet_plans(), dataset_json(4)
    change(plans, dataset)
    configuration = "2d" if message == "3D configuration" else "3d_fullres"
    with pytest.raises(ConfigError, match=message):
        adapt_plans(plans, configuration, dataset, SMALL_ENCODER)
