"""Read what pretraining needs from an atlas folder and a preprocessing cache (docs/formats.md).

Only the small per-scan arrays (landmark centres and validity, L x 3 and L values) are loaded
here; images stay on disk and are read patch by patch with ``np.load(mmap_mode="r")`` by
:mod:`drasclr_monailabel.ssl.patches`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.errors import InputError

ATLAS_FORMAT = "drasclr-atlas/1"


def default_atlas_dir() -> Path:
    """The atlas shipped with the package (``drasclr_monailabel/anatomy/atlas``)."""
    return Path(__file__).resolve().parent.parent / "anatomy" / "atlas"


@dataclass(frozen=True)
class AtlasLandmarks:
    """The landmarks of an atlas, the same for every subject.

    Attributes:
        atlas_id: the atlas ``id`` (caches and encoders name it).
        patch_size: patch edge in voxels (32).
        coordinates: float32 (L, 3) normalised location (cx, cy, cz) in about [-1, 1].
        neighbours: int64 (L, k) the k nearest other landmarks.
        coordinate_normalisation: ``{"centre": [...], "half_extent": [...]}`` from atlas.json.
        source: the atlas folder.
    """

    atlas_id: str
    patch_size: int
    coordinates: np.ndarray
    neighbours: np.ndarray
    coordinate_normalisation: dict[str, Any]
    source: Path

    @property
    def n_landmarks(self) -> int:
        return int(self.coordinates.shape[0])

    def metadata(self) -> dict[str, Any]:
        """The ``atlas`` block of ``encoder.json``."""
        return {"id": self.atlas_id, "n_landmarks": self.n_landmarks, "patch_size": self.patch_size,
                "coordinate_normalisation": self.coordinate_normalisation}


def read_atlas_landmarks(atlas_dir: str | Path) -> AtlasLandmarks:
    """Read ``atlas.json`` and ``landmarks.csv`` of an atlas folder."""
    atlas_dir = Path(atlas_dir)
    meta_path, table_path = atlas_dir / "atlas.json", atlas_dir / "landmarks.csv"
    meta = _read_json(meta_path)
    if meta.get("format") != ATLAS_FORMAT:
        raise InputError(meta_path, f"format is {meta.get('format')!r}, expected {ATLAS_FORMAT!r}")
    if not table_path.is_file():
        raise InputError(table_path, "not found (every atlas folder holds landmarks.csv)")
    with open(table_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    neighbour_columns = sorted((c for c in (rows[0].keys() if rows else []) if c.startswith("neighbour_")), key=lambda c: int(c.split("_")[1]))
    try:
        rows.sort(key=lambda r: int(r["index"]))
        if [int(r["index"]) for r in rows] != list(range(len(rows))):
            raise ValueError("the index column must run 0 .. L-1")
        coordinates = np.array([[float(r["cx"]), float(r["cy"]), float(r["cz"])] for r in rows], dtype=np.float32)
        neighbours = np.array([[int(r[c]) for c in neighbour_columns] for r in rows], dtype=np.int64).reshape(len(rows), len(neighbour_columns))
    except (KeyError, ValueError) as exc:
        raise InputError(table_path, f"is not a landmark table ({exc})") from None
    if not rows:
        raise InputError(table_path, "lists no landmarks")
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= len(rows)):
        raise InputError(table_path, "a neighbour index is outside 0 .. L-1")
    if meta.get("n_landmarks", len(rows)) != len(rows):
        raise InputError(meta_path, f"n_landmarks is {meta.get('n_landmarks')} but landmarks.csv lists {len(rows)}")
    return AtlasLandmarks(atlas_id=str(meta.get("id")), patch_size=int(meta.get("patch_size", 32)), coordinates=coordinates,
                          neighbours=neighbours, coordinate_normalisation=meta.get("coordinate_normalisation", {}), source=atlas_dir)


@dataclass(frozen=True)
class CacheIndex:
    """The complete scans of a preprocessing cache.

    Attributes:
        root: the cache folder.
        subject_ids: scan ids, sorted.
        image_paths: ``<id>/<id>_image.npy`` per scan.
        centres: int32 (S, L, 3) patch centres (z, y, x) in each scan's image.
        valid: bool (S, L) landmarks that may be sampled.
        atlas_id: the atlas all scans were registered to.
    """

    root: Path
    subject_ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    centres: np.ndarray
    valid: np.ndarray
    atlas_id: str

    @property
    def n_subjects(self) -> int:
        return len(self.subject_ids)


@dataclass(frozen=True)
class CacheScan:
    """One complete scan of a preprocessing cache: its image file and landmark arrays.

    Attributes:
        scan_id: the scan id (its folder name).
        image_path: ``<id>/<id>_image.npy``, int16 HU (Z, Y, X) on the 1 mm grid.
        centres: int32 (L, 3) patch centres (z, y, x) in the image.
        valid: bool (L,) landmarks inside the scanned lung.
    """

    scan_id: str
    image_path: Path
    centres: np.ndarray
    valid: np.ndarray


def complete_scans(cache_dir: str | Path) -> list[Path]:
    """The ``<id>/<id>_qa.json`` of every complete scan of ``cache_dir``, sorted by id."""
    root = Path(cache_dir)
    if not root.is_dir():
        raise InputError(root, "is not a folder (expected a cache written by 'drasclr preprocess')")
    qa_files = sorted(p for p in root.glob("*/*_qa.json") if p.name == f"{p.parent.name}_qa.json")
    if not qa_files:
        raise InputError(root, "holds no complete preprocessed scan (no <id>/<id>_qa.json)")
    return qa_files


def read_cache_scan(qa_path: str | Path, atlas: AtlasLandmarks) -> CacheScan:
    """Check one scan's ``_qa.json`` against ``atlas`` and read its landmark arrays (not the image).

    Raises:
        InputError: another format or atlas, a missing image, or landmark arrays of the wrong shape.
    """
    qa_path = Path(qa_path)
    scan_id, folder = qa_path.parent.name, qa_path.parent
    qa = _read_json(qa_path)
    if qa.get("format") != CACHE_FORMAT:
        raise InputError(qa_path, f"format is {qa.get('format')!r}, expected {CACHE_FORMAT!r}: run drasclr preprocess on its scans again")
    scan_atlas = qa_atlas_id(qa)
    if scan_atlas != atlas.atlas_id:
        raise InputError(qa_path, f"scan was registered to atlas {scan_atlas!r}, but atlas {atlas.atlas_id!r} ({atlas.source}) is in use")
    centres = _load_small(folder / f"{scan_id}_landmarks.npy", (atlas.n_landmarks, 3)).astype(np.int32)
    valid = _load_small(folder / f"{scan_id}_valid.npy", (atlas.n_landmarks,)).astype(bool)
    image = folder / f"{scan_id}_image.npy"
    if not image.is_file():
        raise InputError(image, "not found beside its _qa.json")
    return CacheScan(scan_id, image, centres, valid)


def open_cache(cache_dir: str | Path, atlas: AtlasLandmarks) -> CacheIndex:
    """Index the complete scans of ``cache_dir`` (those with ``_qa.json``) and check them against ``atlas``."""
    scans = [read_cache_scan(qa_path, atlas) for qa_path in complete_scans(cache_dir)]
    return CacheIndex(root=Path(cache_dir), subject_ids=tuple(s.scan_id for s in scans), image_paths=tuple(s.image_path for s in scans),
                      centres=np.stack([s.centres for s in scans]), valid=np.stack([s.valid for s in scans]), atlas_id=atlas.atlas_id)


def qa_atlas_id(qa: dict[str, Any]) -> str | None:
    """The atlas id recorded in a scan's ``_qa.json`` (``{"atlas": {"id": ...}}``)."""
    atlas = qa.get("atlas")
    return atlas.get("id") if isinstance(atlas, dict) else None


def _load_small(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as .npy ({exc})") from None
    if array.shape != shape:
        raise InputError(path, f"has shape {array.shape}, expected {shape} (one row per atlas landmark)")
    return array


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object")
    return data
