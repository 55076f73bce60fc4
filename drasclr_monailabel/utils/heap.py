"""Give freed heap memory back to the operating system after a large piece of work.

glibc keeps memory that a process freed in its malloc arenas for reuse, so a long-running server's
resident memory stays at the high-water mark of its last training round or prediction, and the
next request's peak comes on top. ``malloc_trim`` returns the free pages. Other C libraries
(musl, macOS) have no such call; there this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return free heap pages to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
