"""Exported encoders (``encoder.pt`` + ``encoder.json``, docs/formats.md): write, check and load.

``encoder.pt`` holds ``{"state_dict": {name: tensor}}`` only, so ``torch.load(weights_only=True)``
reads it. ``encoder.json`` says how to rebuild the module (``architecture``, dispatched on its
``name``), which atlas and intensity window it was trained with, and how. Consumers call
:func:`load_encoder`, which refuses a file of another format, atlas or intensity window with one
line naming the file and the mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import (
    ARCHITECTURE_NAME,
    DrasclrEncoder,
    EncoderArchitecture,
)
from drasclr_monailabel.models.intensity import IntensityWindow
from drasclr_monailabel.utils.atomic import write_json, write_with

ENCODER_FORMAT = "drasclr-encoder/1"
WEIGHTS_NAME = "encoder.pt"
METADATA_NAME = "encoder.json"

EncoderBuilder = Callable[[dict[str, Any]], nn.Module]


def _build_drasclr_encoder(arguments: dict[str, Any]) -> nn.Module:
    return DrasclrEncoder(EncoderArchitecture(**arguments))


_BUILDERS: dict[str, EncoderBuilder] = {ARCHITECTURE_NAME: _build_drasclr_encoder}


def register_encoder_builder(name: str, builder: EncoderBuilder) -> None:
    """Let :func:`load_encoder` rebuild another encoder type, e.g. the joint 2D/3D method's.

    ``builder`` receives the ``architecture`` block of ``encoder.json`` without ``name``.
    """
    _BUILDERS[name] = builder


def save_encoder(out_dir: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/encoder.pt`` then ``out_dir/encoder.json`` (each atomically).

    ``metadata`` is everything of ``encoder.json`` except ``format``, which is set here.
    Returns the two paths.
    """
    out_dir = Path(out_dir)
    missing = [key for key in ("method", "architecture", "atlas", "intensity", "patch_size", "embedding_dim") if key not in metadata]
    if missing:
        raise ValueError(f"encoder metadata lacks {', '.join(missing)}")
    tensors = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()}
    weights, meta = out_dir / WEIGHTS_NAME, out_dir / METADATA_NAME
    write_with(weights, lambda tmp: torch.save({"state_dict": tensors}, tmp))
    write_json(meta, {"format": ENCODER_FORMAT, **metadata})
    return weights, meta


def encoder_paths(path: str | Path) -> tuple[Path, Path]:
    """``(encoder.pt, encoder.json)`` for a folder or either file of the pair."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS_NAME, METADATA_NAME) else path
    return folder / WEIGHTS_NAME, folder / METADATA_NAME


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and check ``encoder.json`` (format and required keys) without loading weights."""
    _, meta_path = encoder_paths(path)
    if not meta_path.is_file():
        raise InputError(meta_path, "not found: an exported encoder is a folder with encoder.pt and encoder.json")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(meta_path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != ENCODER_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise InputError(meta_path, f"format is {found!r}, expected {ENCODER_FORMAT!r}")
    for key in ("architecture", "atlas", "intensity"):
        if not isinstance(metadata.get(key), dict):
            raise InputError(meta_path, f"lacks the '{key}' block")
    return metadata


def load_encoder(
    path: str | Path,
    expected_atlas_id: str | None = None,
    expected_intensity: IntensityWindow | None = None,
    expected_method: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported encoder in eval mode and return it with its metadata.

    Args:
        path: the export folder, or its ``encoder.pt`` / ``encoder.json``.
        expected_atlas_id: refuse an encoder trained with another atlas.
        expected_intensity: refuse an encoder trained with another intensity window.
        expected_method: refuse an encoder of another pretraining method.
        map_location: device for the weights.

    Raises:
        InputError: missing files, wrong format, a mismatch, or weights that do not fit.
    """
    weights_path, meta_path = encoder_paths(path)
    metadata = read_metadata(meta_path)
    atlas_id = metadata["atlas"].get("id")
    if expected_atlas_id is not None and atlas_id != expected_atlas_id:
        raise InputError(meta_path, f"encoder was trained with atlas {atlas_id!r}, expected atlas {expected_atlas_id!r}")
    if expected_method is not None and metadata.get("method") != expected_method:
        raise InputError(meta_path, f"encoder comes from method {metadata.get('method')!r}, expected {expected_method!r}")
    if expected_intensity is not None:
        try:
            window = IntensityWindow.from_dict(metadata["intensity"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(meta_path, f"intensity block is malformed ({exc})") from None
        if window != expected_intensity:
            raise InputError(meta_path, f"encoder intensity window {metadata['intensity']} differs from the expected {expected_intensity.to_dict()}")
    arguments = dict(metadata["architecture"])
    name = arguments.pop("name", None)
    if name not in _BUILDERS:
        raise InputError(meta_path, f"unknown architecture {name!r} (known: {', '.join(sorted(_BUILDERS))})")
    try:
        encoder = _BUILDERS[name](arguments)
    except (TypeError, ValueError) as exc:
        raise InputError(meta_path, f"architecture block cannot build the encoder ({exc})") from None
    if not weights_path.is_file():
        raise InputError(weights_path, "not found beside encoder.json")
    try:
        payload = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for corrupt or non-tensor files
        raise InputError(weights_path, f"cannot be loaded as tensors ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise InputError(weights_path, "does not hold a 'state_dict'")
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise InputError(weights_path, f"weights do not fit the architecture in encoder.json ({str(exc).splitlines()[-1].strip()})") from None
    if result.missing_keys or result.unexpected_keys:
        problems = [f"missing {', '.join(result.missing_keys[:3])}" if result.missing_keys else "",
                    f"unexpected {', '.join(result.unexpected_keys[:3])}" if result.unexpected_keys else ""]
        raise InputError(weights_path, "weights do not fit the architecture in encoder.json: " + "; ".join(p for p in problems if p))
    return encoder.to(map_location).eval(), metadata


def save_random_encoder(out_dir: str | Path, architecture: EncoderArchitecture, seed: int, note: str) -> Path:
    """Export a randomly initialised (``seed``) DrasCLR encoder for the shipped atlas, laid out as a
    pretrained one (for tests and for benchmark sizes too small to pretrain); returns ``out_dir``.
    ``note`` goes to ``training.note`` in ``encoder.json``."""
    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.models.intensity import LUNG_WINDOW

    torch.manual_seed(seed)
    atlas = load_default_atlas()
    save_encoder(out_dir, DrasclrEncoder(architecture).state_dict(), {
        "method": "drasclr", "architecture": architecture.to_dict(),
        "atlas": {"id": atlas.atlas_id, "n_landmarks": atlas.n_landmarks},
        "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": architecture.embedding_dim,
        "training": {"note": note},
    })
    return Path(out_dir)
