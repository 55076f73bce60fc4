"""The embedding folder written by ``drasclr embed`` (docs/embeddings.md) and its readers.

```
OUT/
  scans/<id>.npz     per scan, written as soon as the scan is embedded (resume unit)
  embeddings.npz     ids (N,), embeddings (N, D) float32 patient vectors, n_valid (N,), ...
  index.csv          id, n_valid, source, file
  embeddings.json    metadata, written last: a folder with it is complete
```
Every file is written atomically. A per-scan file records the encoder id (sha256 of
``encoder.pt``), its source and the landmark cap, so a re-run skips exactly the scans that the same
encoder already embedded the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.utils.atomic import write_json, write_text, write_with

EMBEDDINGS_FORMAT = "drasclr-embeddings/1"
SCANS_DIR = "scans"
COHORT_NAME = "embeddings.npz"
INDEX_NAME = "index.csv"
METADATA_NAME = "embeddings.json"


@dataclass
class ScanEmbedding:
    """One scan's embeddings.

    Attributes:
        scan_id: the scan id.
        source: what was embedded (cache scan folder or scan file), as an absolute path.
        encoder_id: :func:`encoder_id` of the encoder.
        max_landmarks: the landmark cap it was embedded with (0 = all; joint2d3d: 0).
        arrays: drasclr: ``landmarks`` float32 (L, D), NaN rows where ``valid`` (L,) is False;
            joint2d3d: ``slices`` float32 (S, d) and ``volume`` float32 (d,).
    """

    scan_id: str
    source: str
    encoder_id: str
    max_landmarks: int
    arrays: dict[str, np.ndarray]

    @property
    def n_valid(self) -> int:
        """Landmarks with an embedding (drasclr) or slices (joint2d3d)."""
        return int(self.arrays["valid"].sum()) if "valid" in self.arrays else len(self.arrays["slices"])


def encoder_id(weights_path: str | Path) -> str:
    """First 12 hex digits of the sha256 of ``encoder.pt``: names the exact weights."""
    digest = hashlib.sha256()
    with open(weights_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def scan_path(out_dir: str | Path, scan_id: str) -> Path:
    return Path(out_dir) / SCANS_DIR / f"{scan_id}.npz"


def write_scan(out_dir: str | Path, record: ScanEmbedding) -> Path:
    """Write ``scans/<id>.npz`` atomically and return its path."""
    path = scan_path(out_dir, record.scan_id)
    meta = {"id": np.array(record.scan_id), "source": np.array(record.source), "encoder_id": np.array(record.encoder_id),
            "max_landmarks": np.array(record.max_landmarks)}
    write_with(path, lambda tmp: np.savez(tmp, **meta, **record.arrays))
    return path


def read_scan(path: str | Path) -> ScanEmbedding:
    """Read a per-scan file.

    Raises:
        InputError: not a per-scan embedding file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"cannot be read as an embedding file ({exc})") from None
    try:
        return ScanEmbedding(str(contents.pop("id")), str(contents.pop("source")), str(contents.pop("encoder_id")),
                             int(contents.pop("max_landmarks")), contents)
    except KeyError as exc:
        raise InputError(path, f"lacks {exc} (not written by drasclr embed)") from None


def is_done(out_dir: str | Path, scan_id: str, source: str, encoder: str, max_landmarks: int) -> bool:
    """True when ``scans/<id>.npz`` holds this scan from ``source``, embedded by ``encoder`` with this cap."""
    path = scan_path(out_dir, scan_id)
    if not path.is_file():
        return False
    try:
        record = read_scan(path)
    except InputError:
        return False
    return record.source == source and record.encoder_id == encoder and record.max_landmarks == max_landmarks


def write_cohort(out_dir: str | Path, ids: list[str], patient: np.ndarray, n_valid: np.ndarray, sources: list[str],
                 metadata: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> None:
    """Write ``embeddings.npz`` and ``index.csv``, then ``embeddings.json`` (last).

    Args:
        patient: float32 (N, D) patient-level vectors in the order of ``ids``.
        n_valid: (N,) landmarks (or slices) each vector pools.
        extra: more cohort arrays (e.g. attention weights), stored in ``embeddings.npz``.
    """
    out_dir = Path(out_dir)
    arrays = {"ids": np.array(ids, dtype=str), "embeddings": np.asarray(patient, dtype=np.float32),
              "n_valid": np.asarray(n_valid, dtype=np.int32), **(extra or {})}
    write_with(out_dir / COHORT_NAME, lambda tmp: np.savez(tmp, **arrays))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "n_valid", "source", "file"])
    for scan_id, count, source in zip(ids, n_valid, sources):
        writer.writerow([scan_id, int(count), source, f"{SCANS_DIR}/{scan_id}.npz"])
    write_text(out_dir / INDEX_NAME, table.getvalue())
    write_json(out_dir / METADATA_NAME, {"format": EMBEDDINGS_FORMAT, **metadata})


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Patient-level embeddings from an embedding folder or an ``.npz`` with ``ids`` and ``embeddings``.

    Returns:
        ids (N,) str, embeddings (N, D) float32, metadata (``embeddings.json`` when present, else {}).

    Raises:
        InputError: missing file, or an npz without ``ids`` / ``embeddings`` of matching length.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    npz = path / COHORT_NAME if path.is_dir() else path
    if not npz.is_file():
        raise InputError(npz, "not found (an embedding folder written by 'drasclr embed', or its embeddings.npz)")
    try:
        with np.load(npz, allow_pickle=False) as data:
            ids, features = data["ids"].astype(str), data["embeddings"].astype(np.float32)
    except KeyError as exc:
        raise InputError(npz, f"lacks the array {exc} (expected 'ids' (N,) and 'embeddings' (N, D))") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(npz, f"cannot be read as .npz ({exc})") from None
    if features.ndim != 2 or len(ids) != len(features):
        raise InputError(npz, f"'embeddings' has shape {features.shape} but there are {len(ids)} ids (expected (N, D))")
    if len(set(ids.tolist())) != len(ids):
        raise InputError(npz, "lists an id twice")
    meta_path = folder / METADATA_NAME
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() and npz.name == COHORT_NAME else {}
    return ids, features, metadata


def load_landmark_embeddings(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All per-landmark embeddings of a drasclr embedding folder, in the order of ``embeddings.npz``.

    Returns:
        ids (N,), landmarks float32 (N, L, D) with NaN where not embedded, valid bool (N, L).
        For a large cohort this is N x L x D x 4 bytes (9,000 scans x 500 x 128: 2.3 GB); read
        ``scans/<id>.npz`` one at a time instead.
    """
    ids, _, _ = load_embeddings(out_dir)
    records = [read_scan(scan_path(out_dir, scan_id)) for scan_id in ids]
    if any("landmarks" not in r.arrays for r in records):
        raise InputError(out_dir, "holds joint2d3d embeddings (slices and volumes), not landmark embeddings")
    return ids, np.stack([r.arrays["landmarks"] for r in records]), np.stack([r.arrays["valid"] for r in records])
