"""Warm-start a network's DrasCLR encoder from an exported encoder, with a report of what was taken.

nnU-Net's ``-pretrained_weights`` demands every key of the whole network with equal shapes, so it
cannot take an encoder-only export (``encoder.pt`` + ``encoder.json``, docs/formats.md). This
loader copies tensor by tensor, matched by name:

- ``loaded``: same name, same shape;
- ``reshaped``: same name, shapes differing along exactly one axis (e.g. an encoder exported with
  fewer experts or channels than the network's): the overlapping block is copied and the rest
  keeps its initialisation;
- ``skipped``: names the network lacks, or shapes that differ along several axes.
Network tensors the export does not have keep their initialisation (``not_in_export``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW

PRETRAINED_ENV = "DRASCLR_PRETRAINED"
"""Environment variable naming the exported encoder (folder or its encoder.pt / encoder.json)."""

_LISTED_KEYS = 8


@dataclass
class WarmStartReport:
    """Which tensors of an exported encoder went into the network, and how."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_in_export: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report: one summary line, then the reshaped and skipped keys."""
        summary = (f"DrasCLR warm start from {self.source}: loaded {len(self.loaded)}, reshaped {len(self.reshaped)}, "
                   f"skipped {len(self.skipped)} tensors; {len(self.not_in_export)} network tensors not in the export "
                   "keep their initialisation")
        out = [summary]
        for title, keys in (("reshaped", self.reshaped), ("skipped", self.skipped), ("not in the export", self.not_in_export)):
            if keys:
                more = f" (+{len(keys) - _LISTED_KEYS} more)" if len(keys) > _LISTED_KEYS else ""
                out.append(f"  {title}: {', '.join(keys[:_LISTED_KEYS])}{more}")
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "loaded": len(self.loaded), "reshaped": self.reshaped,
                "skipped": self.skipped, "not_in_export": self.not_in_export}


def transfer_state(target: nn.Module, source_state: dict[str, torch.Tensor], source: str) -> WarmStartReport:
    """Copy ``source_state`` into ``target``'s parameters and buffers by name (see module doc)."""
    report = WarmStartReport(source=source)
    own = target.state_dict()
    with torch.no_grad():
        for name, tensor in source_state.items():
            current = own.get(name)
            if current is None:
                report.skipped.append(f"{name} (not in the network)")
            elif current.shape == tensor.shape:
                current.copy_(tensor.to(current.dtype))
                report.loaded.append(name)
            elif _differs_along_one_axis(current.shape, tensor.shape):
                overlap = tuple(slice(0, min(a, b)) for a, b in zip(current.shape, tensor.shape))
                current[overlap] = tensor[overlap].to(current.dtype)
                report.reshaped.append(f"{name} {list(tensor.shape)} -> {list(current.shape)}")
            else:
                report.skipped.append(f"{name} (shape {list(tensor.shape)} vs {list(current.shape)})")
    report.not_in_export = [name for name in own if name not in source_state]
    return report


def warm_start_encoder(encoder: nn.Module, path: str | Path, expected_atlas_id: str | None = None) -> WarmStartReport:
    """Load an exported DrasCLR encoder into ``encoder`` (in place) and report what was taken.

    Raises:
        InputError: the export is missing or malformed, made for another atlas or intensity
            window (see :func:`~drasclr_monailabel.models.export.load_encoder`), or not a single
            weight of it fits the network.
    """
    exported, _ = load_encoder(path, expected_atlas_id=expected_atlas_id, expected_intensity=LUNG_WINDOW)
    report = transfer_state(encoder, exported.state_dict(), str(path))
    parameters = {name for name, _ in encoder.named_parameters()}
    if not any(entry.split(" ")[0] in parameters for entry in report.loaded + report.reshaped):
        raise InputError(path, "no weight of this encoder fits the network's DrasCLR encoder (nothing to warm-start)")
    return report


def _differs_along_one_axis(a: torch.Size, b: torch.Size) -> bool:
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
