"""The intensity window that maps HU to network input, shared by training and every consumer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntensityWindow:
    """Clip HU to ``clip_hu``, then ``(HU + offset) / divisor + shift``.

    The default maps the lung window [-1024, 240] HU onto [-1, 1] (the DrasCLR convention).
    """

    clip_hu: tuple[float, float] = (-1024.0, 240.0)
    offset: float = 1024.0
    divisor: float = 632.0
    shift: float = -1.0

    def clip(self, hu: torch.Tensor) -> torch.Tensor:
        """HU clipped to the window, as float32."""
        return hu.float().clamp(self.clip_hu[0], self.clip_hu[1])

    def scale(self, hu: torch.Tensor) -> torch.Tensor:
        """Map (already clipped or augmented) HU values to network units, without clipping."""
        return (hu.float() + self.offset) / self.divisor + self.shift

    def __call__(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> network input (clip, then scale)."""
        return self.scale(self.clip(hu))

    def to_dict(self) -> dict:
        """The ``intensity`` block of ``encoder.json``."""
        return {"clip_hu": [_plain(v) for v in self.clip_hu], "offset": _plain(self.offset),
                "divisor": _plain(self.divisor), "shift": _plain(self.shift)}

    @classmethod
    def from_dict(cls, data: dict) -> IntensityWindow:
        return cls(clip_hu=tuple(float(v) for v in data["clip_hu"]), offset=float(data["offset"]),
                   divisor=float(data["divisor"]), shift=float(data["shift"]))


def _plain(value: float) -> float | int:
    """1024.0 -> 1024 so that the JSON reads as the contract in docs/formats.md writes it."""
    return int(value) if float(value).is_integer() else float(value)


LUNG_WINDOW = IntensityWindow()
