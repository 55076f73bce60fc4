"""How to reach a DICOMweb server: URL, credentials, timeouts, and errors that say what went wrong.

A wrong password, a PACS that is down or a URL that points at the wrong path must stop the caller
with one line (``<url>: authentication failed ...``), never with a stack trace or a hang: every
request gets a timeout, and HTTP and socket failures are translated by :func:`pacs_errors`.

Credentials come from the caller (CLI options) or, for the MONAI Label app, from MONAI Label's own
settings ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``MONAI_LABEL_DICOMWEB_PASSWORD`` (environment
variables), which its ``/proxy/dicom`` endpoint (OHIF's way to the PACS) uses as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient

from drasclr_monailabel.errors import DrasclrError

DEFAULT_TIMEOUT_S = 30.0
"""Seconds to wait for a connection or for the next bytes of an answer (not for a whole transfer)."""

USERNAME_VARIABLES = ("MONAI_LABEL_DICOMWEB_USERNAME", "MONAI_LABEL_DATASTORE_USERNAME")
PASSWORD_VARIABLES = ("MONAI_LABEL_DICOMWEB_PASSWORD", "MONAI_LABEL_DATASTORE_PASSWORD")
"""Environment variables read for credentials, first non-empty wins (MONAI Label's names)."""


class PacsError(DrasclrError):
    """A DICOMweb server that cannot be used. Message: ``<url>: <problem>``."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")


@dataclass(frozen=True)
class PacsConnection:
    """A DICOMweb service root and how to log in to it.

    Attributes:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
        username, password: HTTP basic authentication; empty for none.
        timeout_s: connect and read timeout of every request, seconds.
        qido_prefix, wado_prefix, stow_prefix: extra path segments some servers put in front of
            the QIDO/WADO/STOW routes (MONAI Label's ``MONAI_LABEL_*_PREFIX``); usually empty.
    """

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    qido_prefix: str = ""
    wado_prefix: str = ""
    stow_prefix: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PacsError(self.url, "is not a DICOMweb URL (expected http(s)://host:port/path)")
        if parts.username or parts.password:
            raise PacsError(_without_credentials(self.url), "put the user name and password in the options or "
                                                            "environment, not in the URL")
        if self.timeout_s <= 0:
            raise PacsError(self.url, f"timeout must be positive, got {self.timeout_s}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username or self.password else None

    @classmethod
    def from_env(cls, url: str, username: str | None = None, password: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, **prefixes: str) -> PacsConnection:
        """Credentials given explicitly, else from :data:`USERNAME_VARIABLES` / :data:`PASSWORD_VARIABLES`."""
        return cls(url, username if username is not None else _first_env(USERNAME_VARIABLES),
                   password if password is not None else _first_env(PASSWORD_VARIABLES), timeout_s, **prefixes)

    @classmethod
    def from_monailabel_settings(cls, url: str, settings: Any) -> PacsConnection:
        """What ``monailabel start_server`` was given: credentials, proxy timeout and route prefixes."""
        return cls(
            url,
            settings.MONAI_LABEL_DICOMWEB_USERNAME or settings.MONAI_LABEL_DATASTORE_USERNAME or "",
            settings.MONAI_LABEL_DICOMWEB_PASSWORD or settings.MONAI_LABEL_DATASTORE_PASSWORD or "",
            float(settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT or DEFAULT_TIMEOUT_S),
            settings.MONAI_LABEL_QIDO_PREFIX or "",
            settings.MONAI_LABEL_WADO_PREFIX or "",
            settings.MONAI_LABEL_STOW_PREFIX or "",
        )


class _TimeoutSession(requests.Session):
    """A session that never waits forever: every request gets the connection's timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(method, url, *args, **kwargs)


def open_client(connection: PacsConnection, check: bool = True) -> DICOMwebClient:
    """A DICOMweb client with the connection's credentials and timeout.

    Args:
        check: first ask the server for one study (QIDO-RS), so that a wrong password or an
            unreachable server fails here with a clear :class:`PacsError`.
    """
    # dicomweb-client logs every request at INFO ("search for studies", "store instances"), which
    # would fill a server log or a command's output; its warnings still show.
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    session = _TimeoutSession(connection.timeout_s)
    session.auth = connection.auth
    client = DICOMwebClient(connection.url, session=session, qido_url_prefix=connection.qido_prefix or None,
                            wado_url_prefix=connection.wado_prefix or None, stow_url_prefix=connection.stow_prefix or None)
    # dicomweb-client retries every failed request (a refused connection too) five times with
    # exponential waits: 30 s before a wrong URL is reported, minutes for a silent server.
    client.set_http_retry_params(retry=False)
    if check:
        with pacs_errors(connection, "searching for studies"):
            client.search_for_studies(limit=1)
    return client


@contextlib.contextmanager
def pacs_errors(connection: PacsConnection, action: str) -> Iterator[None]:
    """Turn socket and HTTP failures raised inside the block into one :class:`PacsError` line."""
    try:
        yield
    except requests.HTTPError as exc:
        raise PacsError(connection.url, f"{action}: {_http_problem(exc.response, connection)}") from None
    except requests.Timeout:
        raise PacsError(connection.url, f"{action}: no answer within {connection.timeout_s:g} s "
                                        "(is the server overloaded or the URL pointing at something else?)") from None
    except requests.ConnectionError as exc:
        raise PacsError(connection.url, f"{action}: cannot connect ({_root_cause(exc)}); is the PACS running "
                                        "and the URL right?") from None
    except ValueError as exc:
        # dicomweb-client raises ValueError when an answer is not the DICOM JSON or multipart it expects.
        raise PacsError(connection.url, f"{action}: the answer is not DICOMweb ({exc}); does the URL end at the "
                                        "DICOMweb root (Orthanc: /dicom-web)?") from None


def _http_problem(response: requests.Response | None, connection: PacsConnection) -> str:
    code = response.status_code if response is not None else 0
    if code in (401, 403):
        who = f"user '{connection.username}'" if connection.username else "no user name"
        return (f"authentication failed (HTTP {code}, {who}); check the user name and password "
                f"({USERNAME_VARIABLES[0]} / {PASSWORD_VARIABLES[0]} for MONAI Label)")
    if code == 404:
        return "not found (HTTP 404); the URL must end at the DICOMweb root (Orthanc: /dicom-web)"
    detail = (response.text or "").strip().splitlines()[:1] if response is not None else []
    return f"HTTP {code}" + (f" ({detail[0][:200]})" if detail else "")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text.split("] ", 1)[-1] if "] " in text else text


def _first_env(names: tuple[str, ...]) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), "")


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=host + port).geturl()
