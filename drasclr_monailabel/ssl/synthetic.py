"""Tiny synthetic atlases and preprocessing caches, written file by file to the contracts of
docs/formats.md, so pretraining can be tested and benchmarked anywhere in seconds.

Images are smooth random fields in the lung HU range with a few bright blobs (vessels) and a
subject-specific parenchyma level, so two augmented views of one subject's patch can be told apart from other subjects'
patches: an easy contrastive task whose loss falls within a few dozen steps.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from scipy import ndimage

from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.utils.atomic import save_npy, write_json, write_text

SYNTHETIC_ATLAS_ID = "synthetic-grid"


def write_synthetic_atlas(out_dir: str | Path, grid: tuple[int, int, int] = (3, 3, 3), step: int = 20,
                          n_neighbours: int = 2, atlas_id: str = SYNTHETIC_ATLAS_ID, patch_size: int = 32) -> Path:
    """Write ``atlas.json`` and ``landmarks.csv`` for a ``grid`` of landmarks ``step`` voxels apart.

    The atlas image is notional (1 mm voxels, origin 0); landmark ``i`` sits at grid position
    ``(gz, gy, gx)`` in C order. ``patch_size`` below 32 makes unit tests cheaper (the encoder
    is fully convolutional). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    positions = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), axis=-1).reshape(-1, 3)
    voxels = (positions + 1) * step  # (z, y, x)
    size_zyx = (np.asarray(grid) + 1) * step + 1
    world = voxels[:, ::-1].astype(float)  # (x, y, z) mm with origin 0 and 1 mm spacing
    centre = (size_zyx[::-1] - 1) / 2.0
    half_extent = np.maximum(size_zyx[::-1] / 2.0, 1.0)
    normalised = (world - centre) / half_extent
    distances = np.linalg.norm(normalised[:, None] - normalised[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1, kind="stable")[:, :n_neighbours]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "z", "y", "x", "wx", "wy", "wz", "cx", "cy", "cz", "lung_fraction",
                     *[f"neighbour_{j + 1}" for j in range(n_neighbours)]])
    for i in range(len(voxels)):
        writer.writerow([i, *voxels[i], *world[i], *np.round(normalised[i], 6), 1.0, *neighbours[i]])
    write_text(out_dir / "landmarks.csv", buffer.getvalue())
    write_json(out_dir / "atlas.json", {
        "format": "drasclr-atlas/1", "id": atlas_id, "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
        "size": [int(v) for v in size_zyx[::-1]], "patch_size": patch_size, "step": step, "min_lung_fraction": 0.1,
        "n_landmarks": len(voxels),
        "coordinate_normalisation": {"centre": centre.tolist(), "half_extent": half_extent.tolist()},
        "description": "synthetic grid atlas for tests and benchmarks",
    })
    return out_dir


def write_synthetic_cache(out_dir: str | Path, atlas_dir: str | Path, n_subjects: int = 6, seed: int = 0,
                          invalid_fraction: float = 0.1, jitter: int = 3,
                          level_range_hu: tuple[float, float] = (-930.0, -770.0)) -> Path:
    """Write a preprocessing cache of ``n_subjects`` synthetic scans registered to ``atlas_dir``.

    Each scan's image is the atlas grid (size from atlas.json) with landmark centres moved by up
    to ``jitter`` voxels; about ``invalid_fraction`` of the landmarks of each scan are marked
    invalid (as a partial-coverage scan would have). Each scan's parenchyma level is drawn from
    ``level_range_hu`` (a wide range makes subjects easy to tell apart). Returns ``out_dir``.
    """
    import json

    out_dir = Path(out_dir)
    atlas = json.loads((Path(atlas_dir) / "atlas.json").read_text())
    with open(Path(atlas_dir) / "landmarks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    atlas_voxels = np.array([[int(r["z"]), int(r["y"]), int(r["x"])] for r in rows], dtype=np.int32)
    shape = tuple(int(v) for v in atlas["size"][::-1])
    rng = np.random.default_rng(seed)
    for number in range(n_subjects):
        scan_id = f"synth{number:03d}"
        folder = out_dir / scan_id
        image = _smooth_lung_field(shape, rng, level_range_hu)
        centres = atlas_voxels + rng.integers(-jitter, jitter + 1, size=atlas_voxels.shape)
        valid = rng.random(len(rows)) >= invalid_fraction
        save_npy(folder / f"{scan_id}_image.npy", image)
        save_npy(folder / f"{scan_id}_lung.npy", (image < -500).astype(np.uint8))
        save_npy(folder / f"{scan_id}_landmarks.npy", centres.astype(np.int32))
        save_npy(folder / f"{scan_id}_valid.npy", valid)
        write_text(folder / f"{scan_id}_affine.tfm", "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                   "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n")
        write_json(folder / f"{scan_id}_qa.json", {
            "format": CACHE_FORMAT, "id": scan_id, "source": "synthetic",
            "atlas": {"id": atlas["id"], "n_landmarks": len(rows)},
            "grid": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                     "size": list(shape[::-1])},
            "warnings": [],
        })
    write_json(out_dir / "summary.json", {"done": n_subjects, "skipped": 0, "failed": 0, "failures": {}})
    return out_dir


def _smooth_lung_field(shape: tuple[int, ...], rng: np.random.Generator, level_range_hu: tuple[float, float]) -> np.ndarray:
    """int16 HU: parenchyma at a subject-specific level (as emphysema severity varies between
    subjects), smooth texture and a few bright blobs."""
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=2.0)
    texture *= 60.0 / (texture.std() + 1e-6)
    blobs = np.zeros(shape, dtype=np.float32)
    count = max(1, int(np.prod(shape) / 4000))
    points = tuple(rng.integers(0, s, size=count) for s in shape)
    blobs[points] = 1.0
    blobs = ndimage.gaussian_filter(blobs, sigma=1.5)
    blobs *= 900.0 / (blobs.max() + 1e-6)
    return np.clip(rng.uniform(*level_range_hu) + texture + blobs, -1024, 3000).astype(np.int16)
