"""nnU-Net trainers that train the DrasCLR emphysema network, warm-started from a pretrained encoder.

Use (see docs/nnunet.md)::

    export nnUNet_extTrainer=$(drasclr nnunet-env --ext-trainer-path)
    export DRASCLR_PRETRAINED=/path/to/encoder_folder      # optional: without it, from scratch
    nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerDrasCLR -device cpu

What differs from :class:`nnUNetTrainer`:

- the plans configuration is adapted (:func:`~drasclr_monailabel.nnunet.plans.adapt_plans`): the
  network is :class:`~drasclr_monailabel.nnunet.network.DrasclrNnunetNetwork` and the patch edges
  are multiples of 32; the adapted plans are what ``plans.json`` in the model folder holds;
- after the network is built, the exported encoder named by ``DRASCLR_PRETRAINED`` is loaded into
  it with a printed report of loaded, reshaped and skipped tensors (nnU-Net's
  ``-pretrained_weights`` cannot read an encoder-only checkpoint);
- deep-supervision targets match the network's outputs (strides 1, 2, 4, 8, 16) instead of the
  plans' pooling stages;
- intensity augmentations touch only the CT channel, never the atlas-coordinate channels;
- ``torch.compile`` only when ``nnUNet_compile`` asks for it (the encoder's location routing has
  data-dependent branches that break graphs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)
from torch import nn
from torch._dynamo import OptimizedModule

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.models.encoder import EncoderArchitecture
from drasclr_monailabel.models.export import read_metadata
from drasclr_monailabel.nnunet.augmentation import intensity_on_ct_only
from drasclr_monailabel.nnunet.dataset import dataset_atlas_id
from drasclr_monailabel.nnunet.network import (
    NETWORK_CLASS_NAME,
    DrasclrNnunetNetwork,
    encoder_architecture,
    output_strides,
)
from drasclr_monailabel.nnunet.plans import adapt_plans
from drasclr_monailabel.nnunet.warm_start import PRETRAINED_ENV, warm_start_encoder

CUDA = torch.device("cuda")
"""nnU-Net's default training device (``nnUNetv2_train -device`` passes the one asked for)."""


def _model_folder(trainer_name: str, plans: dict, configuration: str) -> Path | None:
    """nnU-Net's output folder for this trainer, plans and configuration (None without nnUNet_results)."""
    results = os.environ.get("nnUNet_results")
    if not results:
        return None
    return Path(results) / plans["dataset_name"] / f"{trainer_name}__{plans['plans_name']}__{configuration}"


def pretrained_from_environment() -> Path | None:
    """The exported encoder named by ``DRASCLR_PRETRAINED`` (None when unset or empty)."""
    value = os.environ.get(PRETRAINED_ENV, "").strip()
    return Path(value).expanduser() if value else None


class nnUNetTrainerDrasCLR(nnUNetTrainer):
    """nnU-Net training of the DrasCLR emphysema network (see the module documentation)."""

    max_patch_edge: int | None = None
    """Cap on the patch edges (voxels); None keeps nnU-Net's planned patch (rounded to 32)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CUDA) -> None:
        self.pretrained = pretrained_from_environment()
        self.continuing = bool(plans.get("continue_training", False))
        architecture, origin = self._encoder_architecture(plans, configuration)
        adapted, notes = adapt_plans(plans, configuration, dataset_json, architecture, max_patch_edge=self.max_patch_edge)
        super().__init__(adapted, configuration, fold, dataset_json, device)
        for note in [*notes, f"encoder architecture from {origin}"]:
            self.print_to_log_file(note)

    def _encoder_architecture(self, plans: dict, configuration: str) -> tuple[EncoderArchitecture, str]:
        """The encoder to build, and where its architecture comes from.

        ``DRASCLR_PRETRAINED`` decides when set. Without it, a model folder that this trainer
        already wrote keeps its architecture, so ``--c``, ``--val`` and later runs rebuild the
        network their checkpoints hold; otherwise the default architecture (random weights).
        """
        if self.pretrained is not None:
            return encoder_architecture(read_metadata(self.pretrained)["architecture"]), str(self.pretrained)
        folder = _model_folder(type(self).__name__, plans, configuration)
        written = folder / "plans.json" if folder is not None else None
        if written is not None and written.is_file():
            architecture = json.loads(written.read_text())["configurations"].get(configuration, {}).get("architecture", {})
            if architecture.get("network_class_name") == NETWORK_CLASS_NAME:
                return encoder_architecture(architecture["arch_kwargs"]["encoder"]), str(written)
        return EncoderArchitecture(), f"the default (random weights: {PRETRAINED_ENV} is not set)"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build the network from the adapted plans (also what ``nnUNetPredictor`` calls)."""
        if configuration_manager.network_arch_class_name != NETWORK_CLASS_NAME:
            raise ConfigError(plans_manager.plans.get("plans_name", "plans"),
                              f"configuration builds {configuration_manager.network_arch_class_name}, not the DrasCLR "
                              "network: use the plans.json written by nnUNetTrainerDrasCLR")
        return DrasclrNnunetNetwork(num_input_channels, num_output_channels,
                                    deep_supervision=enable_deep_supervision,
                                    **configuration_manager.network_arch_init_kwargs)

    def initialize(self) -> None:
        super().initialize()
        if self.pretrained is not None and not self.continuing:
            report = warm_start_encoder(self.plain_network().encoder, self.pretrained, dataset_atlas_id(self.dataset_json))
            for line in report.lines():
                self.print_to_log_file(line)

    def plain_network(self) -> DrasclrNnunetNetwork:
        """The network without DDP or torch.compile wrappers."""
        network = self.network.module if self.is_ddp else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        self.plain_network().deep_supervision = enabled

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        if not self.enable_deep_supervision:
            return None
        strides = output_strides(encoder_architecture(self.configuration_manager.network_arch_init_kwargs["encoder"]))
        return [[1.0 / s] * len(self.configuration_manager.patch_size) for s in strides]

    def _do_i_compile(self) -> bool:
        return self.device.type == "cuda" and os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")

    @staticmethod
    def get_training_transforms(*args, **kwargs):
        return intensity_on_ct_only(nnUNetTrainer.get_training_transforms(*args, **kwargs))


class nnUNetTrainerDrasCLR_smoke(nnUNetTrainerDrasCLR):
    """A minutes-long run for CI and smoke checks: 32^3 patches, 2 epochs of 3 iterations, 1
    validation batch, and a final validation without test-time mirroring (8 times fewer windows)."""

    max_patch_edge = 32

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CUDA) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes
