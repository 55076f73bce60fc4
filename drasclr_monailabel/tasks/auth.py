"""Make MONAI Label's own token check (``MONAI_LABEL_AUTH_ENABLE=true``) work with PyJWT 2.

MONAI Label 0.8.5 calls ``jwt.decode(token, key, options=...)`` without ``algorithms``, which PyJWT
2 requires: every token, valid or not, is refused with 401. :func:`install` gives its auth module a
``jwt`` whose ``decode`` accepts the signature algorithms of a Keycloak realm key (RS256 by
default) and nothing else, so neither ``none`` nor an HMAC keyed with the public key can pass.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import jwt

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256")
"""Asymmetric algorithms a realm's public key verifies."""


def decode(token: str, key: Any, **kwargs: Any) -> dict[str, Any]:
    """``jwt.decode`` restricted to :data:`ALGORITHMS`."""
    return jwt.decode(token, key, algorithms=list(ALGORITHMS), **kwargs)


def install() -> None:
    """Point MONAI Label's auth module at :func:`decode` (once per process)."""
    from monailabel.endpoints.user import auth

    if getattr(auth.jwt, "decode", None) is not decode:
        auth.jwt = SimpleNamespace(decode=decode)
