"""Turn a volume into a compact stack of axial slices, and 2D images into squares, for training.

A :class:`SliceStack` holds a volume as ``float16 (Z, N, N)`` in [0, 1] display units (the lung
window [-1024, 240] HU mapped linearly; -1024 HU = 0), ordered inferior to superior at a fixed
z spacing, in-plane a square of N x N pixels:

* scan files (any orientation) are reoriented to LPS, cropped in-plane to a square around the
  body (voxels above ``body_threshold_hu``, so the square holds anatomy rather than air) and
  resampled; slice positions are relative: -1 at the lowest kept slice, +1 at the highest;
* preprocessing-cache scans (1 mm, LPS, cropped to the lungs) keep their whole in-plane extent;
  each slice's position is its atlas z: the slice centre mapped through the inverse of the scan's
  ``_affine.tfm`` into the atlas, normalised with the atlas's ``coordinate_normalisation``.

Reading a slice at a fractional index interpolates linearly between the two nearest slices.

Building a stack decodes the whole scan (about a second for a full-resolution CT), while a
training step needs one or two slices of each of many volumes; :class:`StackStore` therefore
builds each stack once and keeps it on disk as ``.npy`` files that are read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.models.volume_transformer import (
    POSITION_ATLAS,
    POSITION_RELATIVE,
)
from drasclr_monailabel.ssl.cache import (
    default_atlas_dir,
    qa_atlas_id,
    read_atlas_landmarks,
)
from drasclr_monailabel.ssl.joint2d3d.sources import VolumeEntry
from drasclr_monailabel.utils.atomic import save_npy

AIR_HU = -1024.0
_CHUNK = 16


@dataclass(frozen=True)
class StackSettings:
    """How volumes become stacks (stored in ``encoder.json`` so embedding repeats it exactly).

    Attributes:
        store_size: N, the in-plane edge of the kept square (pixels).
        slice_spacing_mm: z spacing of the kept slices.
        body_threshold_hu: in-plane crop threshold for scan files.
    """

    store_size: int
    slice_spacing_mm: float
    body_threshold_hu: float


@dataclass(frozen=True)
class AtlasZ:
    """What maps a cache scan's slices to atlas z: the atlas id and its z normalisation (mm)."""

    atlas_id: str
    centre_z: float
    half_extent_z: float

    @classmethod
    def from_atlas_dir(cls, atlas_dir: str | Path) -> AtlasZ:
        atlas = read_atlas_landmarks(atlas_dir)
        norm = atlas.coordinate_normalisation
        try:
            return cls(atlas.atlas_id, float(norm["centre"][2]), float(norm["half_extent"][2]))
        except (KeyError, IndexError, TypeError, ValueError):
            raise InputError(Path(atlas_dir) / "atlas.json", "lacks coordinate_normalisation centre / half_extent") from None


def resolve_atlas_z(atlas_dir: Path | None) -> AtlasZ:
    """The atlas that places cache scans' slices: ``data.atlas`` or the package atlas."""
    folder = atlas_dir or default_atlas_dir()
    if not (folder / "atlas.json").is_file():
        where = "data.atlas" if atlas_dir else "the package atlas"
        raise ConfigError("data.atlas", f"{where} {folder} holds no atlas.json; the cache's scans need the atlas they were "
                                        "registered to (pass --atlas DIR)")
    return AtlasZ.from_atlas_dir(folder)


@dataclass(frozen=True)
class SliceStack:
    """A volume kept for training.

    Attributes:
        pixels: float16 (Z, N, N) in [0, 1], slice 0 the most inferior.
        positions: float32 (Z,) slice positions in [-1, 1] (relative, or atlas z).
        kind: :data:`POSITION_RELATIVE` or :data:`POSITION_ATLAS`.
        source: where the volume was read from.
    """

    pixels: np.ndarray
    positions: np.ndarray
    kind: int
    source: str

    def sample(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slices at fractional ``indices`` (K,) in [0, Z-1] -> (float32 (K, N, N), float32 (K,) positions)."""
        last = self.pixels.shape[0] - 1
        indices = np.clip(np.asarray(indices, dtype=np.float64), 0, last)
        below = np.floor(indices).astype(np.int64)
        above = np.minimum(below + 1, last)
        weight = (indices - below).astype(np.float32)
        pixels = self.pixels[below].astype(np.float32) * (1 - weight)[:, None, None] + self.pixels[above].astype(np.float32) * weight[:, None, None]
        positions = self.positions[below] * (1 - weight) + self.positions[above] * weight
        return pixels, positions.astype(np.float32)


def load_stack(entry: VolumeEntry, settings: StackSettings, atlas: AtlasZ | None = None) -> SliceStack:
    """Read ``entry`` (scan file / DICOM folder, or a cache scan, which needs ``atlas``) as a stack."""
    if entry.cached:
        if atlas is None:
            raise InputError(entry.path, "is a preprocessing-cache scan: an atlas is needed to place its slices")
        return stack_from_cache(entry.path, settings, atlas)
    return stack_from_volume(read_ct(entry.path), settings)


class StackStore:
    """Stacks kept as ``.npy`` files in ``folder``, built on first use and then read memory-mapped.

    A stack's files are named by the volume id and a key over the source (path, size and
    modification time of its files), the :class:`StackSettings` and the atlas, so a changed scan
    or setting gets a new stack. Files are written atomically (pixels last: they mark a complete
    stack), so concurrent data-loading workers or ranks may build the same stack safely.
    """

    def __init__(self, folder: str | Path, settings: StackSettings, atlas: AtlasZ | None = None) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.atlas = atlas

    def get(self, entry: VolumeEntry) -> SliceStack:
        stem = f"{entry.volume_id}-{self.key(entry)}"
        pixels_path, positions_path = self.folder / f"{stem}.pixels.npy", self.folder / f"{stem}.positions.npy"
        if not pixels_path.is_file():
            stack = load_stack(entry, self.settings, self.atlas)
            save_npy(positions_path, stack.positions)
            save_npy(pixels_path, stack.pixels)
            return stack
        try:
            pixels, positions = np.load(pixels_path, mmap_mode="r"), np.load(positions_path)
        except (OSError, ValueError) as exc:
            raise InputError(pixels_path, f"stored slice stack cannot be read ({exc}); delete it to rebuild") from None
        return SliceStack(pixels=pixels, positions=positions, kind=POSITION_ATLAS if entry.cached else POSITION_RELATIVE,
                          source=str(entry.path))

    def key(self, entry: VolumeEntry) -> str:
        """16 hex digits identifying the stack of ``entry`` under these settings."""
        path = Path(entry.path).resolve()
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        stats = [(p.name, *_size_and_time(p)) for p in files]
        text = json.dumps([str(path), stats, self.settings.__dict__, self.atlas.__dict__ if self.atlas else None], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def stack_from_volume(volume: CTVolume, settings: StackSettings) -> SliceStack:
    """A scan file's stack: LPS, in-plane square around the body, relative slice positions."""
    volume = volume.canonical()
    hu = volume.hu
    box = _body_box(hu, volume.spacing, settings.body_threshold_hu)
    pixels, _ = _resample(hu, volume.spacing, box, settings)
    count = pixels.shape[0]
    positions = np.linspace(-1.0, 1.0, count, dtype=np.float32) if count > 1 else np.zeros(1, dtype=np.float32)
    return SliceStack(pixels=pixels, positions=positions, kind=POSITION_RELATIVE, source=volume.source)


def stack_from_cache(folder: str | Path, settings: StackSettings, atlas: AtlasZ) -> SliceStack:
    """A preprocessing-cache scan's stack, with each slice's normalised atlas z as its position."""
    import SimpleITK as sitk

    folder = Path(folder)
    scan_id = folder.name
    qa_path = folder / f"{scan_id}_qa.json"
    try:
        qa = json.loads(qa_path.read_text())
        grid = qa["grid"]
        spacing = tuple(float(v) for v in grid["spacing"])
        origin = tuple(float(v) for v in grid["origin"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(qa_path, f"cannot be read for its grid ({exc})") from None
    if qa_atlas_id(qa) != atlas.atlas_id:
        raise InputError(qa_path, f"scan was registered to atlas {qa_atlas_id(qa)!r}, but training uses atlas {atlas.atlas_id!r}")
    image_path = folder / f"{scan_id}_image.npy"
    try:
        hu = np.load(image_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(image_path, f"cannot be read as .npy ({exc})") from None
    if hu.ndim != 3:
        raise InputError(image_path, f"has shape {hu.shape}, expected (Z, Y, X)")
    tfm_path = folder / f"{scan_id}_affine.tfm"
    try:
        to_atlas = sitk.ReadTransform(str(tfm_path)).GetInverse()
    except RuntimeError as exc:
        raise InputError(tfm_path, f"cannot be read as an invertible ITK transform ({str(exc).strip().splitlines()[-1]})") from None
    _, y, x = hu.shape
    box = (0.0, float(y), 0.0, float(x))
    pixels, source_z = _resample(hu, spacing, _square(box, spacing), settings)
    centre_x, centre_y = origin[0] + (x - 1) / 2 * spacing[0], origin[1] + (y - 1) / 2 * spacing[1]
    atlas_z = np.array([to_atlas.TransformPoint((centre_x, centre_y, origin[2] + k * spacing[2]))[2] for k in source_z])
    positions = ((atlas_z - atlas.centre_z) / atlas.half_extent_z).astype(np.float32)
    return SliceStack(pixels=pixels, positions=positions, kind=POSITION_ATLAS, source=str(folder))


def image_to_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """A 2D image (H, W) in [0, 1] -> float16 (size, size): padded to a square with 0, then resized."""
    h, w = pixels.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = pixels
    resized = F.interpolate(torch.from_numpy(square)[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].clamp(0, 1).numpy().astype(np.float16)


def _body_box(hu: np.ndarray, spacing: tuple[float, float, float], threshold: float) -> tuple[float, float, float, float]:
    """Square in-plane box (y0, y1, x0, x1) in voxels around the voxels above ``threshold``
    (every 4th slice suffices); the whole slice when nothing is above it."""
    step = max(1, hu.shape[0] // 32)
    body = (np.asarray(hu[::step]) > threshold).any(axis=0)
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    if rows.size == 0:
        box = (0.0, float(hu.shape[1]), 0.0, float(hu.shape[2]))
    else:
        box = (float(rows[0]), float(rows[-1] + 1), float(cols[0]), float(cols[-1] + 1))
    return _square(box, spacing)


def _square(box: tuple[float, float, float, float], spacing: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """Grow ``box`` (voxels) to a square in millimetres with the same centre."""
    y0, y1, x0, x1 = box
    side_mm = max((y1 - y0) * spacing[1], (x1 - x0) * spacing[0])
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    half_y, half_x = side_mm / 2 / spacing[1], side_mm / 2 / spacing[0]
    return cy - half_y, cy + half_y, cx - half_x, cx + half_x


def _resample(hu: np.ndarray, spacing: tuple[float, float, float], box: tuple[float, float, float, float],
              settings: StackSettings) -> tuple[np.ndarray, np.ndarray]:
    """Windowed, in-plane resampled slices every ``slice_spacing_mm`` along z.

    Returns float16 (Z', N, N) in [0, 1] and the fractional source slice index of each (Z',).
    """
    count = hu.shape[0]
    step = settings.slice_spacing_mm / spacing[2]
    source_z = np.arange(0.0, count - 1 + 1e-6, step) if count > 1 else np.zeros(1)
    below = np.floor(source_z).astype(np.int64)
    above = np.minimum(below + 1, count - 1)
    needed = np.unique(np.concatenate([below, above]))
    resized = {}
    y0, y1, x0, x1 = (round(v) for v in box)
    for start in range(0, needed.size, _CHUNK):
        chunk = needed[start : start + _CHUNK]
        crop = np.full((chunk.size, y1 - y0, x1 - x0), AIR_HU, dtype=np.float32)
        sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, hu.shape[1]), max(x0, 0), min(x1, hu.shape[2])
        crop[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = hu[chunk, sy0:sy1, sx0:sx1]
        display = (torch.from_numpy(crop).clamp(*LUNG_WINDOW.clip_hu) - AIR_HU) / (LUNG_WINDOW.clip_hu[1] - AIR_HU)
        small = F.interpolate(display[:, None], size=(settings.store_size, settings.store_size), mode="bilinear",
                              antialias=True, align_corners=False)[:, 0].clamp(0, 1).numpy()
        resized.update(zip(chunk.tolist(), small))
    weight = (source_z - below).astype(np.float32)[:, None, None]
    lower = np.stack([resized[i] for i in below.tolist()])
    upper = np.stack([resized[i] for i in above.tolist()])
    return (lower * (1 - weight) + upper * weight).astype(np.float16), source_z
