"""Per-scan cache of patient-level embeddings, invalidated when the scan or the encoder changes.

One file per scan, ``<cache_dir>/embeddings/<image id>.npz``, holding the vector and the two keys
it was computed for: the image file's fingerprint (size and modification time, see
:func:`file_fingerprint`) and the encoder's identity. A lookup with other keys is a miss, so a
replaced scan or a new encoder is embedded again. Files are written atomically by the scoring
process while the server reads them; the server keeps the vectors in memory and re-reads a file
only when it changed, so selecting among 1,000 scans costs about one ``stat`` per scan.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drasclr_monailabel.utils.atomic import atomic_open


def file_fingerprint(path: str | Path) -> str | None:
    """Cheap identity of a file's content: size and nanosecond modification time (None if missing).

    Hashing every CT on every request would cost seconds per scan; any tool that rewrites a scan
    changes its modification time.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


def file_sha256(path: str | Path, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256 (for small files such as an encoder)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


@dataclass
class _Entry:
    stamp: int
    image: str
    encoder: str
    vector: np.ndarray


class EmbeddingCache:
    """Embeddings of scans by image id, valid for one encoder."""

    def __init__(self, cache_dir: str | Path, encoder_key: str) -> None:
        self.folder = Path(cache_dir) / "embeddings"
        self.encoder_key = encoder_key
        self._memory: dict[str, _Entry] = {}

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.npz"

    def get(self, image_id: str, image_fingerprint: str | None) -> np.ndarray | None:
        """The cached vector for this exact image content and encoder, else None."""
        if image_fingerprint is None:
            return None
        path = self.path(image_id)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._memory.pop(image_id, None)
            return None
        entry = self._memory.get(image_id)
        if entry is None or entry.stamp != stamp:
            entry = self._read(path, stamp)
            if entry is None:
                return None
            self._memory[image_id] = entry
        if entry.image != image_fingerprint or entry.encoder != self.encoder_key:
            return None
        return entry.vector

    def put(self, image_id: str, image_fingerprint: str, vector: np.ndarray) -> None:
        """Store ``vector`` (D,) for this image content (atomically)."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        with atomic_open(self.path(image_id), "wb") as fh:
            np.savez(fh, vector=vector, image=np.array(image_fingerprint), encoder=np.array(self.encoder_key))

    def _read(self, path: Path, stamp: int) -> _Entry | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                return _Entry(stamp, str(data["image"]), str(data["encoder"]), data["vector"].astype(np.float32))
        except (OSError, ValueError, KeyError):
            return None
