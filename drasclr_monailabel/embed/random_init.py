"""A randomly initialised copy of an exported encoder: the baseline every probe is compared with.

A probe on embeddings of a pretrained encoder only says something about pretraining when it beats
the same architecture with untrained weights: a random convolutional network already passes on
much of its input's density (and a 0-1 severity is mostly density). The copy has the same
``encoder.json`` except ``training``, which says it is untrained, so every consumer (``drasclr
embed``, the probe comparison benchmark) reads it exactly like the trained export.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.export import encoder_paths, read_metadata, save_encoder


def random_init_encoder(metadata: dict) -> nn.Module:
    """A freshly initialised encoder of the architecture in ``metadata`` (``encoder.json``), using torch's global RNG."""
    architecture = {key: value for key, value in metadata["architecture"].items() if key != "name"}
    if metadata.get("method") == "joint2d3d":
        from drasclr_monailabel.ssl.joint2d3d.network import encoder_from_architecture

        return encoder_from_architecture(architecture)
    return DrasclrEncoder(EncoderArchitecture(**architecture))


def export_random_init(encoder_dir: str | Path, out_dir: str | Path, seed: int) -> Path:
    """Write ``out_dir/encoder.pt`` + ``encoder.json``: ``encoder_dir``'s architecture with seeded random weights.

    The same seed gives the same weights (torch's CPU initialisation is deterministic). An export of
    the same seed and architecture already in ``out_dir`` is kept as it is, so its ``encoder.pt``
    (whose bytes name the temporary file it was saved as) keeps its hash and ``drasclr embed``
    resumes. The global RNG is left as it was.

    Raises:
        InputError: ``encoder_dir`` is not an export, or its architecture block cannot build an encoder.
    """
    metadata = read_metadata(encoder_dir)
    trained = {key: value for key, value in metadata.items() if key != "format"}
    trained["training"] = {"random_init": {"seed": seed, "architecture_of": str(Path(encoder_dir).resolve())}}
    if _holds(out_dir, trained):
        return Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            encoder = random_init_encoder(metadata)
        except (TypeError, ValueError) as exc:
            raise InputError(encoder_paths(encoder_dir)[1], f"architecture block cannot build the encoder ({exc})") from None
    save_encoder(out_dir, encoder.state_dict(), trained)
    return Path(out_dir)


def _holds(out_dir: str | Path, metadata: dict) -> bool:
    """True when ``out_dir`` is an export with exactly this ``encoder.json`` content."""
    weights, _ = encoder_paths(out_dir)
    try:
        existing = read_metadata(out_dir)
    except InputError:
        return False
    return weights.is_file() and {key: value for key, value in existing.items() if key != "format"} == metadata
