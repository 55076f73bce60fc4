"""Per-scan cache of patient-level embeddings, invalidated when the scan or the encoder changes.

One ``.npy`` file per scan and content: ``<cache_dir>/embeddings/<image id>__<scan fingerprint>__<encoder key>.npy``.
The keys are in the name, so a lookup is one ``stat`` (a replaced scan or another encoder simply
has no file under its name) and a file, once written, never needs re-checking: the server keeps
the vectors it has read in memory. Files are written atomically by the scoring process while the
server reads them; writing a new version removes the scan's older ones. Selecting among 1,000
scans thus costs about two ``stat`` calls per scan (scan and cache file) once warm.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from drasclr_monailabel.utils.atomic import save_npy


class EmbeddingCache:
    """Embeddings of scans by image id, valid for one encoder."""

    SEPARATOR = "__"

    def __init__(self, cache_dir: str | Path, encoder_key: str) -> None:
        self.folder = Path(cache_dir) / "embeddings"
        self.encoder_key = encoder_key
        self._memory: dict[Path, np.ndarray] = {}

    def path(self, image_id: str, image_fingerprint: str) -> Path:
        return self.folder / f"{image_id}{self.SEPARATOR}{image_fingerprint}{self.SEPARATOR}{self.encoder_key}.npy"

    def get(self, image_id: str, image_fingerprint: str | None) -> np.ndarray | None:
        """The cached vector for this exact image content and encoder, else None."""
        if image_fingerprint is None:
            return None
        path = self.path(image_id, image_fingerprint)
        vector = self._memory.get(path)
        if vector is None:
            try:
                vector = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
            except (OSError, ValueError):
                return None
            self._memory[path] = vector
        return vector

    def put(self, image_id: str, image_fingerprint: str, vector: np.ndarray) -> None:
        """Store ``vector`` (D,) for this image content (atomically); drop the scan's older entries."""
        path = self.path(image_id, image_fingerprint)
        save_npy(path, np.asarray(vector, dtype=np.float32).reshape(-1))
        for old in self.folder.glob(f"{glob.escape(image_id)}{self.SEPARATOR}*.npy"):
            if old != path and old.name.count(self.SEPARATOR) == 2:
                old.unlink(missing_ok=True)
