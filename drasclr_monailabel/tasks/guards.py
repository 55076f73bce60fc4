"""Checks on request names and image references before MONAI Label acts on them.

MONAI Label 0.8.5 answers an unknown model, strategy or scoring method with a bare 500, and its
infer endpoint accepts any existing server path as "image" (``/infer/lung?image=/etc/passwd``
would read that file; so would ``?image=/tmp/tmpXYZ.nii.gz``, another client's upload). The app
calls these checks first, so a bad request gets a 4xx naming the problem and reads or writes
nothing. An uploaded image is accepted only as the file the checked infer route saved for this
very request (:data:`CURRENT_UPLOAD`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from drasclr_monailabel.tasks.http import NOT_FOUND, UNPROCESSABLE, refuse

CURRENT_UPLOAD: ContextVar[str | None] = ContextVar("current_upload", default=None)
"""The image file the current infer request uploaded (set by the checked infer route)."""


def require_known(kind: str, name: Any, known: Iterable[str]) -> str:
    """``name`` if it is one of ``known``; else HTTP 404 listing what exists."""
    names = sorted(known)
    if not isinstance(name, str) or name not in names:
        listed = ", ".join(names) or "none"
        raise refuse(NOT_FOUND, f"unknown {kind} '{str(name)[:80]}' (available: {listed})")
    return name


def is_upload(path: str, session_dir: str | None = None) -> bool:
    """True for a file the server wrote for this request: this request's upload, or an image of
    an upload session."""
    resolved = Path(os.path.realpath(path))
    upload = CURRENT_UPLOAD.get()
    if upload is not None and resolved == Path(os.path.realpath(upload)):
        return resolved.is_file()
    if session_dir:
        root = Path(os.path.realpath(session_dir))
        return root in resolved.parents and resolved.exists()
    return False


def require_infer_image(image: Any, known_image: bool, session_dir: str | None) -> None:
    """Accept a datastore image id or an upload; refuse any other path (HTTP 404/422)."""
    if not isinstance(image, str):
        return
    if not image:
        raise refuse(UNPROCESSABLE, "no image given: pass ?image=<id> or upload a file")
    if known_image or is_upload(image, session_dir):
        return
    raise refuse(NOT_FOUND, f"image '{image[:80]}' is not in the datastore")
