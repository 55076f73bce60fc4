"""Export the encoder of a training checkpoint (any method) without rebuilding the method or its data."""

from __future__ import annotations

from pathlib import Path

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.export import save_encoder
from drasclr_monailabel.ssl.checkpoint import load_checkpoint
from drasclr_monailabel.ssl.trainer import select_prefix, training_block


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/encoder.pt`` and ``encoder.json`` from ``checkpoint``; returns both paths."""
    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    spec = payload.get("export")
    if not isinstance(spec, dict) or "metadata" not in spec:
        raise InputError(checkpoint, "holds no export description")
    state = select_prefix(payload["network"], spec["state_dict_prefix"])
    if not state:
        raise InputError(checkpoint, f"holds no weights under '{spec['state_dict_prefix']}'")
    training = training_block(payload["config"], payload["step"], payload["steps_per_epoch"], payload["world_size"])
    training["checkpoint"] = str(checkpoint)
    return save_encoder(out_dir, state, {**spec["metadata"], "training": training})
