"""Turn refusals into HTTP 4xx answers with a one-line message.

MONAI Label 0.8.5 registers no exception handlers, so any exception raised below an endpoint
becomes a bare "500 Internal Server Error". FastAPI does answer an ``HTTPException`` raised
anywhere in the call with its status and ``{"detail": message}``, so the app's entry points
(infer, train, scoring, next sample, datastore writes) raise these. Their messages name files by
their base name only: a client learns nothing about the server's folders.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException

from drasclr_monailabel.errors import ConfigError, DrasclrError

BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"/]+/)+([^\s'\"/]*)")
"""An absolute POSIX path (not a URL's path): its last part is group 1."""


def without_paths(message: str) -> str:
    """``message`` with every absolute path replaced by its base name."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "<folder>", message)


def without_server_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every string that is an absolute path replaced by its base name."""
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value:
        return os.path.basename(value.rstrip("/"))
    return value


def refuse(status: int, message: str) -> HTTPException:
    """An exception that FastAPI answers with ``status`` and ``{"detail": message}`` (paths shortened)."""
    return HTTPException(status_code=status, detail=without_paths(message))


@contextlib.contextmanager
def as_http_errors() -> Iterator[None]:
    """Re-raise user errors from the block as HTTP errors: bad options 400, bad files 422."""
    try:
        yield
    except ConfigError as exc:
        raise refuse(BAD_REQUEST, str(exc)) from None
    except DrasclrError as exc:
        raise refuse(UNPROCESSABLE, str(exc)) from None
