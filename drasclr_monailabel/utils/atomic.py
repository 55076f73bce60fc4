"""Write files so that a reader never sees half-written content.

Every writer goes to a temporary file in the destination folder (same filesystem, so the final
``os.replace`` is atomic) and is renamed only after it was flushed and fsynced. A crash leaves
either the old file or the new one, plus possibly a ``.tmp-*`` file that readers ignore.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

TMP_PREFIX = ".tmp-"


def _read_umask() -> int:
    """The process umask, read once at import while the process is still single-threaded
    (setting it, the only portable way to read it, is not thread-safe)."""
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates 0600 files; finished files get the mode a plain open() would give (e.g. 0644).
FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` if the block succeeds.

    The temporary name keeps ``dest``'s suffixes so that libraries that pick a format from the
    extension (SimpleITK, numpy) write the right thing.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(dest: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing and atomically move it onto ``dest`` on success."""
    with atomic_path(dest) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def write_json(dest: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_open(dest) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def write_text(dest: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_open(dest) as fh:
        fh.write(text)


def save_npy(dest: str | Path, array: np.ndarray) -> None:
    """Atomically write one array as ``.npy`` (readable later with ``mmap_mode='r'``)."""
    with atomic_open(dest, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_with(dest: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically produce ``dest`` with ``writer(tmp_path)`` (e.g. a SimpleITK or torch saver)."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
