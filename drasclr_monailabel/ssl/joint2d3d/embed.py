"""Slice, volume and 2D-image embeddings from an exported joint2d3d encoder.

The input is prepared exactly as in training (``input`` block of ``encoder.json``): a volume becomes
a slice stack (:mod:`.stacks`); S slices evenly spaced over the whole stack are resized to the
training slice size; the slice tokens (multi-scale, d) go through the volume transformer with the
slices' positions; the volume embedding is the mean of its output tokens.

    embedder = JointEmbedder.from_dir("runs/joint/")            # or pass the folder to the functions
    slices, volume = embed_volume(embedder, "scan.nii.gz")      # (S, d), (d,)
    images = embed_images(embedder, ["cxr.dcm", "cxr2.png"])    # (N, d)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from drasclr_monailabel.io.images2d import read_image2d
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.volume_transformer import POSITION_ATLAS
from drasclr_monailabel.ssl.joint2d3d.network import Joint2d3dEncoder
from drasclr_monailabel.ssl.joint2d3d.sources import VolumeEntry
from drasclr_monailabel.ssl.joint2d3d.stacks import (
    SliceStack,
    StackSettings,
    image_to_square,
    load_stack,
    resolve_atlas_z,
    stack_from_volume,
)

log = logging.getLogger(__name__)

VolumeSource = CTVolume | SliceStack | str | Path


@dataclass
class JointEmbedder:
    """An exported joint2d3d encoder ready to embed (eval mode, on ``device``).

    Attributes:
        encoder: the slice encoder and volume transformer.
        metadata: its ``encoder.json``.
        device: where it runs.
        batch_size: slices per encoder call.
    """

    encoder: Joint2d3dEncoder
    metadata: dict[str, Any]
    device: torch.device
    batch_size: int = 64

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> JointEmbedder:
        """Load ``encoder.pt`` / ``encoder.json`` from ``path`` (refused unless method joint2d3d)."""
        encoder, metadata = load_encoder(path, expected_method="joint2d3d", map_location=device)
        return cls(encoder=encoder, metadata=metadata, device=torch.device(device), batch_size=batch_size)

    @property
    def settings(self) -> StackSettings:
        spec = self.metadata["input"]
        return StackSettings(store_size=int(spec["store_size"]), slice_spacing_mm=float(spec["slice_spacing_mm"]),
                             body_threshold_hu=float(spec["body_threshold_hu"]))

    @property
    def slice_size(self) -> int:
        return int(self.metadata["input"]["slice_size"])

    @property
    def num_slices(self) -> int:
        return int(self.metadata["input"]["num_slices"])

    @torch.no_grad()
    def slice_tokens(self, squares: np.ndarray) -> np.ndarray:
        """(N, store, store) float in [0, 1] -> float32 (N, d) slice embeddings."""
        tokens = []
        for start in range(0, squares.shape[0], self.batch_size):
            chunk = torch.from_numpy(np.asarray(squares[start : start + self.batch_size], dtype=np.float32)).to(self.device)
            resized = F.interpolate(chunk[:, None], size=(self.slice_size, self.slice_size), mode="bilinear", antialias=True, align_corners=False)
            tokens.append(self.encoder.embed_slices(2 * resized - 1).float().cpu())
        return torch.cat(tokens).numpy()

    @torch.no_grad()
    def volume(self, stack: SliceStack) -> tuple[np.ndarray, np.ndarray]:
        """A slice stack -> (S, d) slice embeddings of S evenly spaced slices, (d,) volume embedding."""
        registered = self.metadata["atlas"].get("id") is not None
        if registered != (stack.kind == POSITION_ATLAS):
            log.warning("%s: slice positions are %s but the encoder was trained with %s positions", stack.source,
                        "atlas z" if stack.kind == POSITION_ATLAS else "relative", "atlas z" if registered else "relative")
        pixels, positions = stack.sample(np.linspace(0.0, stack.pixels.shape[0] - 1, self.num_slices))
        tokens = torch.from_numpy(self.slice_tokens(pixels)).to(self.device)
        _, volume = self.encoder.embed_volume(tokens[None], torch.from_numpy(positions)[None].to(self.device),
                                              torch.tensor([stack.kind], device=self.device))
        return tokens.cpu().numpy(), volume[0].float().cpu().numpy()


def embed_volume(encoder: JointEmbedder | str | Path, volume: VolumeSource, atlas_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Slice and volume embeddings of one volume.

    Args:
        encoder: a :class:`JointEmbedder` or the folder of an exported joint2d3d encoder.
        volume: a :class:`CTVolume`, a scan file or DICOM folder, a preprocessing-cache scan folder
            (``CACHE/<id>``, slices placed in atlas z; needs ``atlas_dir`` or the package atlas), or
            a :class:`SliceStack`.
        atlas_dir: the atlas of a cache scan.

    Returns:
        float32 (S, d) embeddings of S slices evenly spaced from the lowest to the highest slice,
        and the float32 (d,) volume embedding.
    """
    embedder = encoder if isinstance(encoder, JointEmbedder) else JointEmbedder.from_dir(encoder)
    return embedder.volume(_as_stack(volume, embedder.settings, atlas_dir))


def embed_images(encoder: JointEmbedder | str | Path, images: Sequence[str | Path]) -> np.ndarray:
    """float32 (N, d) embeddings of 2D image files (radiographs, CT slices, PNG/JPEG)."""
    embedder = encoder if isinstance(encoder, JointEmbedder) else JointEmbedder.from_dir(encoder)
    size = embedder.settings.store_size
    squares = np.stack([image_to_square(read_image2d(path).pixels, size) for path in images])
    return embedder.slice_tokens(squares)


def _as_stack(volume: VolumeSource, settings: StackSettings, atlas_dir: str | Path | None) -> SliceStack:
    if isinstance(volume, SliceStack):
        return volume
    if isinstance(volume, CTVolume):
        return stack_from_volume(volume, settings)
    path = Path(volume)
    if path.is_dir() and (path / f"{path.name}_qa.json").is_file():
        atlas = resolve_atlas_z(Path(atlas_dir) if atlas_dir else None)
        return load_stack(VolumeEntry(path.name, path, cached=True), settings, atlas)
    return stack_from_volume(read_ct(path), settings)
