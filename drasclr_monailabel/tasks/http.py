"""Turn refusals into HTTP 4xx answers with a one-line message.

MONAI Label 0.8.5 registers no exception handlers, so any exception raised below an endpoint
becomes a bare "500 Internal Server Error". FastAPI does answer an ``HTTPException`` raised
anywhere in the call with its status and ``{"detail": message}``, so the app's entry points
(infer, train, scoring, next sample, datastore writes) raise these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import HTTPException

from drasclr_monailabel.errors import ConfigError, DrasclrError

BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409
UNPROCESSABLE = 422


def refuse(status: int, message: str) -> HTTPException:
    """An exception that FastAPI answers with ``status`` and ``{"detail": message}``."""
    return HTTPException(status_code=status, detail=message)


@contextlib.contextmanager
def as_http_errors() -> Iterator[None]:
    """Re-raise user errors from the block as HTTP errors: bad options 400, bad files 422."""
    try:
        yield
    except ConfigError as exc:
        raise refuse(BAD_REQUEST, str(exc)) from None
    except DrasclrError as exc:
        raise refuse(UNPROCESSABLE, str(exc)) from None
