"""nnUNetTrainerDrasCLR without training: discovery through nnUNet_extTrainer, the adapted
configuration, deep-supervision scales, network building (as nnUNetPredictor does it) and
intensity augmentations that leave the coordinate channels alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from drasclr_monailabel.nnunet.augmentation import (
    INTENSITY_TRANSFORMS,
    LeadingChannelsOnly,
)
from drasclr_monailabel.nnunet.environment import (
    EXT_TRAINER_ENV,
    ext_trainer_folder,
    ext_trainer_setting,
)
from drasclr_monailabel.nnunet.network import DrasclrNnunetNetwork
from drasclr_monailabel.nnunet.trainer import (
    nnUNetTrainerDrasCLR,
    nnUNetTrainerDrasCLR_smoke,
)
from drasclr_monailabel.nnunet.warm_start import PRETRAINED_ENV
from tests.fixtures.nnunet import dataset_json, nnunet_plans


@pytest.fixture
def trainer(tmp_path, monkeypatch, exported_encoder) -> nnUNetTrainerDrasCLR:
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv(PRETRAINED_ENV, str(exported_encoder[0]))
    plans = {**nnunet_plans(), "continue_training": False}
    return nnUNetTrainerDrasCLR(plans, "3d_fullres", 0, dataset_json(4), device=torch.device("cpu"))


def test_trainers_are_found_through_nnunet_ext_trainer(monkeypatch) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv(EXT_TRAINER_ENV, ext_trainer_setting("/somewhere/else"))
    assert recursive_find_trainer_class_by_name("nnUNetTrainerDrasCLR") is nnUNetTrainerDrasCLR
    assert recursive_find_trainer_class_by_name("nnUNetTrainerDrasCLR_smoke") is nnUNetTrainerDrasCLR_smoke
    assert ext_trainer_setting("/somewhere/else").split(":") == [str(ext_trainer_folder()), "/somewhere/else"]


def test_trainer_uses_the_exported_architecture_and_matching_deep_supervision(trainer) -> None:
    config = trainer.configuration_manager
    assert config.patch_size == [64, 192, 160]
    assert config.network_arch_init_kwargs["encoder"]["stem_channels"] == 4
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["patch_size"] == [64, 192, 160], \
        "plans.json in the model folder must hold the adapted patch size"
    assert trainer._get_deep_supervision_scales() == [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3, [0.0625] * 3]


def test_network_is_built_from_the_plans_alone(trainer) -> None:
    plans = PlansManager(trainer.plans_manager.plans)
    network = nnUNetTrainerDrasCLR.build_network_architecture(plans, plans.get_configuration("3d_fullres"), 4, 2,
                                                              enable_deep_supervision=False)
    assert isinstance(network, DrasclrNnunetNetwork) and not network.deep_supervision
    assert network.encoder.architecture.stem_channels == 4


def test_stock_plans_are_refused_by_the_network_builder() -> None:
    plans = PlansManager(nnunet_plans())
    with pytest.raises(Exception, match="use the plans.json written by nnUNetTrainerDrasCLR"):
        nnUNetTrainerDrasCLR.build_network_architecture(plans, plans.get_configuration("3d_fullres"), 4, 2)


def test_intensity_augmentations_leave_coordinates_unchanged() -> None:
    pipeline = nnUNetTrainerDrasCLR.get_training_transforms(
        [32, 32, 32], (-0.5, 0.5), None, (0, 1, 2), False, use_mask_for_norm=[False] * 4)
    wrapped = [t for t in pipeline.transforms if isinstance(t, LeadingChannelsOnly)]
    assert {type(t.transform.transform) for t in wrapped} == set(INTENSITY_TRANSFORMS)
    others = [t.transform if isinstance(t, RandomTransform) else t for t in pipeline.transforms if t not in wrapped]
    assert not any(isinstance(t, INTENSITY_TRANSFORMS) for t in others)
    for transform in wrapped:
        transform.transform.apply_probability = 1.0
    torch.manual_seed(0)
    image = torch.randn(4, 32, 32, 32)
    image[1:] = torch.linspace(-1, 1, 32)[None, None, None, :]
    sample = {"image": image.clone(), "segmentation": torch.zeros(1, 32, 32, 32)}
    for transform in wrapped:
        sample = transform(**sample)
    assert torch.equal(sample["image"][1:], image[1:])
    assert not torch.allclose(sample["image"][0], image[0])


def test_smoke_trainer_is_short_and_skips_test_time_mirroring(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    plans = {**nnunet_plans(), "continue_training": False}
    smoke = nnUNetTrainerDrasCLR_smoke(plans, "3d_fullres", 0, dataset_json(1), device=torch.device("cpu"))
    assert smoke.num_epochs * smoke.num_iterations_per_epoch <= 10
    smoke.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert smoke.inference_allowed_mirroring_axes is None
    assert smoke.configuration_manager.patch_size == [32, 32, 32]


def test_model_folder_keeps_its_encoder_when_the_export_is_not_named(trainer, tmp_path, monkeypatch) -> None:
    """--c / --val / later runs without DRASCLR_PRETRAINED rebuild the network the checkpoints hold."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    save_json(trainer.plans_manager.plans, str(Path(trainer.output_folder_base) / "plans.json"), sort_keys=False)
    monkeypatch.delenv(PRETRAINED_ENV)
    plans = {**nnunet_plans(), "continue_training": True}
    again = nnUNetTrainerDrasCLR(plans, "3d_fullres", 0, dataset_json(4), device=torch.device("cpu"))
    assert again.configuration_manager.network_arch_init_kwargs["encoder"]["stem_channels"] == 4
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "elsewhere"))
    fresh = nnUNetTrainerDrasCLR({**nnunet_plans(), "continue_training": False}, "3d_fullres", 0, dataset_json(4),
                                 device=torch.device("cpu"))
    assert fresh.configuration_manager.network_arch_init_kwargs["encoder"]["stem_channels"] == 8
