"""Where the fine-tuned emphysema model is published, and how readers know which version they hold.

``<model_dir>/emphysema.pt`` is the published checkpoint (``{"model": state_dict, "meta": {...}}``,
written by a temporary file and a rename, so a reader sees the old or the new model, never half of
one); ``emphysema_train_stats.json`` holds the last round's numbers; ``train.lock`` is held while a
round runs. A training process killed mid-round (3D Slicer's "auto-update model" stops the running
round before starting the next) leaves the published model untouched, at most a stale temporary
file, which the next round removes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from drasclr_monailabel.utils.atomic import TMP_PREFIX, write_json

logger = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 600
"""A temporary file older than this belongs to a dead writer (a checkpoint is written in seconds)."""


class TrainingBusy(RuntimeError):
    """Another training round holds the model folder."""


@dataclass(frozen=True)
class ModelStore:
    """Files of one published model in ``model_dir``."""

    model_dir: Path
    name: str = "emphysema"

    @property
    def checkpoint(self) -> Path:
        return self.model_dir / f"{self.name}.pt"

    @property
    def stats_path(self) -> Path:
        return self.model_dir / f"{self.name}_train_stats.json"

    def exists(self) -> bool:
        return self.checkpoint.is_file()

    def version(self) -> str | None:
        """Identity of the published checkpoint (changes on every publish), None if none is published."""
        try:
            stat = self.checkpoint.stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"

    def read_stats(self) -> dict[str, Any]:
        """The last round's statistics ({} before the first round or if the file is unreadable)."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def write_stats(self, stats: dict[str, Any]) -> None:
        write_json(self.stats_path, stats)

    def training_lock(self) -> TrainingLock:
        """Context manager held for a whole round; raises :class:`TrainingBusy` if another round runs."""
        return TrainingLock(self)

    def sweep_stale_temporaries(self) -> int:
        """Delete temporary files left by killed writers; returns how many were removed."""
        removed = 0
        now = time.time()
        for path in self.model_dir.glob(f"{TMP_PREFIX}*"):
            try:
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            logger.info("Removed %d stale temporary file(s) from %s", removed, self.model_dir)
        return removed


class TrainingLock:
    """An exclusive, non-blocking lock on the model folder (released by the OS if the holder dies)."""

    def __init__(self, store: ModelStore) -> None:
        store.model_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(store.model_dir / "train.lock"))

    def __enter__(self) -> TrainingLock:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise TrainingBusy("a training round is already running for this model") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
