"""Adapt an nnU-Net plans configuration so that it builds the DrasCLR emphysema network.

nnU-Net plans a configuration (patch size, spacing, normalisation, a PlainConvUNet) from the
dataset fingerprint. The DrasCLR trainer keeps everything that concerns the data (spacing,
normalisation, batch size, resampling) and replaces:

- ``architecture``: :class:`~drasclr_monailabel.nnunet.network.DrasclrNnunetNetwork` with plain-data
  arguments (encoder architecture, how to undo nnU-Net's CT normalisation, the intensity window,
  the constant location for datasets without coordinate channels), so that ``plans.json`` in the
  trained model folder rebuilds the network for ``nnUNetPredictor`` without our trainer's state;
- ``patch_size``: each edge rounded down to a multiple of the encoder's total stride (32), at
  least 32. Rounding down keeps the memory nnU-Net budgeted for the patch and the patch inside
  images the size of the median case.
"""

from __future__ import annotations

import copy
from typing import Any

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.models.encoder import EncoderArchitecture
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.nnunet.network import (
    ACCEPTED_INPUT_CHANNELS,
    NETWORK_CLASS_NAME,
    total_stride,
)

CT_NORMALISATION = "CTNormalization"
NO_NORMALISATION = "NoNormalization"
DEFAULT_LOCATION = (0.0, 0.0, 0.0)
"""Atlas centre: the location given to every window when the dataset has no coordinate channels."""


def adapt_plans(
    plans: dict[str, Any],
    configuration: str,
    dataset_json: dict[str, Any],
    encoder: EncoderArchitecture,
    dropout: float = 0.1,
    max_patch_edge: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``plans`` whose ``configuration`` builds the DrasCLR network, and notes for the log.

    Args:
        plans: nnU-Net plans (``nnUNetPlans.json`` as a dict); not modified.
        configuration: e.g. ``"3d_fullres"`` (must be 3D).
        dataset_json: the dataset's ``dataset.json`` (channel names decide the input channels).
        encoder: the encoder to build (the exported encoder's architecture when warm-starting).
        dropout: decoder spatial dropout.
        max_patch_edge: cap on every patch edge (short smoke runs on CPU), before rounding.

    Raises:
        ConfigError: a 2D configuration, a channel layout other than CT or CT + 3 coordinates,
            or a normalisation that cannot be undone.
    """
    adapted = copy.deepcopy(plans)
    name = adapted.get("dataset_name", "plans")
    config = _resolved(adapted, configuration)
    patch = [int(p) for p in config["patch_size"]]
    if len(patch) != 3:
        raise ConfigError(f"{name}:{configuration}", "the DrasCLR trainer needs a 3D configuration (e.g. 3d_fullres)")
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    if channels not in ACCEPTED_INPUT_CHANNELS:
        raise ConfigError("dataset.json", f"has {channels} channels; the DrasCLR trainer takes CT (1) or CT + atlas "
                                          "x, y, z coordinates (4), as written by drasclr export-nnunet")
    schemes = list(config["normalization_schemes"])
    if any(s != NO_NORMALISATION for s in schemes[1:]):
        raise ConfigError("dataset.json", f"channels 1-3 must be atlas coordinates named 'noNorm', got {schemes[1:]}")
    hu_scale, hu_offset = _undo_normalisation(adapted, schemes[0])
    divisor = total_stride(encoder)
    capped = [min(p, max_patch_edge) for p in patch] if max_patch_edge else patch
    config["patch_size"] = [max(divisor, p // divisor * divisor) for p in capped]
    config["architecture"] = {
        "network_class_name": NETWORK_CLASS_NAME,
        "arch_kwargs": {
            "encoder": encoder.to_dict(),
            "hu_scale": hu_scale,
            "hu_offset": hu_offset,
            "intensity": LUNG_WINDOW.to_dict(),
            "location": list(DEFAULT_LOCATION),
            "dropout": float(dropout),
        },
        "_kw_requires_import": [],
    }
    adapted["configurations"][configuration] = config
    inputs = "CT + atlas coordinates" if channels > 1 else f"CT, constant location {list(DEFAULT_LOCATION)}"
    notes = [f"DrasCLR network: encoder {encoder.to_dict()}, input channels {channels} ({inputs})"]
    if config["patch_size"] != patch:
        notes.append(f"patch size {patch} -> {config['patch_size']} (multiples of {divisor}, the encoder's total stride)")
    spacing = config.get("spacing", [])
    if spacing and any(abs(float(s) - 1.0) > 0.25 for s in spacing):
        notes.append(f"WARNING: target spacing {spacing} mm; the DrasCLR encoder was pretrained at 1 mm "
                     "(export with drasclr export-nnunet to train at 1 mm)")
    return adapted, notes


def _resolved(plans: dict[str, Any], configuration: str) -> dict[str, Any]:
    """The configuration with nnU-Net's ``inherits_from`` chain merged in (parents first)."""
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise ConfigError(plans.get("dataset_name", "plans"), f"has no configuration '{configuration}' "
                                                              f"(available: {', '.join(configurations)})")
    config = copy.deepcopy(configurations[configuration])
    parent = config.pop("inherits_from", None)
    if parent is None:
        return config
    return {**_resolved(plans, parent), **config}


def _undo_normalisation(plans: dict[str, Any], scheme: str) -> tuple[float, float]:
    """``(scale, offset)`` with ``HU = normalised * scale + offset`` for channel 0."""
    if scheme == NO_NORMALISATION:
        return 1.0, 0.0
    if scheme == CT_NORMALISATION:
        properties = plans["foreground_intensity_properties_per_channel"]["0"]
        return float(max(properties["std"], 1e-8)), float(properties["mean"])
    raise ConfigError("dataset.json", f"channel 0 uses {scheme}; the DrasCLR trainer needs 'CT' (or 'noNorm' for HU) "
                                      "so that the encoder's lung window can be applied")
