"""Build, save and load the emphysema segmentation model.

A checkpoint is ``{"model": state_dict, "meta": {...}}`` with only tensors and plain containers,
so ``torch.load(weights_only=True)`` (MONAI Label's loader) reads it; ``meta`` holds every
argument needed to rebuild the network (its ``network``, one of :data:`NETWORKS`; for the DrasCLR
U-Net ``routing_block``, the edge of the blocks whose centre location routes the encoder: inference
routes as fine-tuning did), the label names and the atlas the coordinates refer to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.segmentation.labels import LabelSet
from drasclr_monailabel.segmentation.segresnet import MonaiSegResNet
from drasclr_monailabel.segmentation.network import ROUTING_BLOCK, EmphysemaUNet
from drasclr_monailabel.utils.atomic import write_with

CHECKPOINT_FORMAT = "drasclr-segmentation/1"
NETWORKS = ("drasclr_unet", "segresnet")
"""Segmentation networks: the DrasCLR U-Net (its encoder pretrained or fresh, routed by atlas
location) and MONAI's SegResNet from scratch on the CT alone, which scored the higher subtype Dice
with 1-2 labelled scans in the label-efficiency benchmark (docs/segmentation.md). A checkpoint
without ``network`` in its meta holds the DrasCLR U-Net (the only network before)."""
SegmentationModel = EmphysemaUNet | MonaiSegResNet
logger = logging.getLogger(__name__)


def build_model(
    labels: list[str] | tuple[str, ...] = ("emphysema",),
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    dropout: float = 0.1,
    deep_supervision: bool = False,
    routing_block: int | None = ROUTING_BLOCK,
    atlas: Atlas | None = None,
    architecture: EncoderArchitecture | None = None,
    network: str = NETWORKS[0],
) -> tuple[SegmentationModel, dict[str, Any]]:
    """A segmentation model on a pretrained DrasCLR encoder (or a fresh one when ``pretrained`` is
    None), or MONAI's SegResNet from scratch (``network="segresnet"``).

    ``routing_block``: see :class:`EmphysemaUNet` (None: one location per window). ``atlas``: the
    atlas the coordinate channels refer to (default: the shipped one); a pretrained encoder must
    have been made for it. ``architecture``: the fresh encoder's (default DrasCLR's); a pretrained
    encoder brings its own. SegResNet takes none of ``pretrained``, ``architecture``,
    ``deep_supervision``; its meta keeps the atlas id too (cases are prepared on that atlas's grid).

    Returns:
        ``(model, info)``: ``info`` holds the checkpoint ``meta`` and a report of the encoder
        weights (``loaded`` key count, ``pretrained`` path or None, the encoder's atlas id).

    Raises:
        InputError: the exported encoder is missing, malformed, or made for another atlas or
            intensity window.
        ValueError: an unknown ``network``, or options that network does not take.
    """
    label_set = LabelSet(tuple(labels))
    atlas_id = (atlas or load_default_atlas()).atlas_id
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    shared = {"format": CHECKPOINT_FORMAT, "network": network, "labels": list(label_set.names), "dropout": dropout,
              "atlas_id": atlas_id, "intensity": LUNG_WINDOW.to_dict()}
    if network == "segresnet":
        if pretrained is not None or architecture is not None or deep_supervision:
            raise ValueError("SegResNet trains from scratch: no pretrained encoder, encoder architecture or deep supervision")
        logger.info("emphysema model: MONAI SegResNet from scratch")
        meta = {**shared, "pretrained": None, "pretraining_method": None}
        model = MonaiSegResNet(label_set.num_classes, dropout=dropout)
        return model.to(device), {"meta": meta, "loaded": 0, "pretrained": None}
    if pretrained is not None and architecture is not None:
        raise ValueError("give either a pretrained encoder or the architecture of a fresh one, not both")
    if pretrained is None:
        encoder = DrasclrEncoder(architecture or EncoderArchitecture())
        encoder_meta: dict[str, Any] = {"method": None, "atlas": {"id": atlas_id}}
        logger.info("emphysema model: no pretrained encoder given, training from scratch")
    else:
        encoder, encoder_meta = load_encoder(pretrained, expected_atlas_id=atlas_id, expected_intensity=LUNG_WINDOW)
        logger.info("emphysema model: loaded %d encoder tensors from %s", len(encoder.state_dict()), pretrained)
    model = EmphysemaUNet(encoder, label_set.num_classes, dropout=dropout, deep_supervision=deep_supervision,
                          routing_block=routing_block)
    meta = {**shared, "encoder_architecture": encoder.architecture.to_dict(), "routing_block": routing_block,
            "pretrained": None if pretrained is None else str(pretrained), "pretraining_method": encoder_meta.get("method")}
    info = {"meta": meta, "loaded": 0 if pretrained is None else len(encoder.state_dict()), "pretrained": meta["pretrained"]}
    return model.to(device), info


def save_checkpoint(model: SegmentationModel, path: str | Path, meta: dict[str, Any]) -> Path:
    """Atomically write ``{"model": state_dict, "meta": meta}``; a reader never sees a partial file.

    The DrasCLR U-Net's ``routing_block`` is written from the model itself, so the checkpoint cannot
    disagree with how it was trained.
    """
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    if isinstance(model, EmphysemaUNet):
        meta = {**meta, "routing_block": model.routing_block}
    write_with(path, lambda tmp: torch.save({"model": state, "meta": meta}, tmp))
    return Path(path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild a saved model in eval mode.

    Raises:
        InputError: missing or corrupt file, another format, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model checkpoint not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise InputError(path, f"cannot be loaded as a checkpoint ({type(exc).__name__})") from None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"is not a {CHECKPOINT_FORMAT} checkpoint")
    model = _network_of(path, meta)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit the network in its meta ({str(exc).splitlines()[-1].strip()})") from None
    return model.to(device).eval(), meta


def network_name(meta: dict[str, Any]) -> str:
    """The network a checkpoint's ``meta`` names; one written before networks were named holds the DrasCLR U-Net."""
    return meta.get("network", NETWORKS[0])


def _network_of(path: Path, meta: dict[str, Any]) -> SegmentationModel:
    """The untrained network a checkpoint's ``meta`` describes."""
    network = network_name(meta)
    num_classes, dropout = LabelSet(tuple(meta["labels"])).num_classes, float(meta.get("dropout", 0.1))
    if network == "segresnet":
        return MonaiSegResNet(num_classes, dropout=dropout)
    if network != NETWORKS[0]:
        raise InputError(path, f"holds an unknown network {network!r} (this version knows {', '.join(NETWORKS)})")
    arguments = {k: v for k, v in meta["encoder_architecture"].items() if k != "name"}
    return EmphysemaUNet(DrasclrEncoder(EncoderArchitecture(**arguments)), num_classes, dropout=dropout,
                         routing_block=meta.get("routing_block", ROUTING_BLOCK))  # older ones: 32^3 patches, one block
