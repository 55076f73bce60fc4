"""Where the package keeps downloaded sample data and default outputs.

``DRASCLR_CACHE`` overrides the cache folder (CI and tests point it at a temporary folder);
otherwise ``$XDG_CACHE_HOME/drasclr`` or ``~/.cache/drasclr``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache folder for sample data (created on first use by the writers)."""
    override = os.environ.get("DRASCLR_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drasclr"
