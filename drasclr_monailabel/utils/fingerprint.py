"""Cheap identities of files, so that per-file caches notice when a file is replaced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
