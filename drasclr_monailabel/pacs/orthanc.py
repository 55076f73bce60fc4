"""A throw-away Orthanc PACS with its DICOMweb plugin, for tests and for trying the hospital path.

Orthanc and the plugin come from Debian packages (``scripts/orthanc.sh install``). This module
never touches the system service: it writes its own configuration into the storage folder and
runs ``Orthanc <config>`` as a child process of the caller, reachable only from this machine
(``RemoteAccessAllowed`` off), with authentication on and the DICOM (C-STORE) port off.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import requests

from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.pacs.connection import PacsConnection

ORTHANC_EXECUTABLES = ("Orthanc", "/usr/sbin/Orthanc")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web"
INSTALL_HINT = "install it with 'sudo bash scripts/orthanc.sh install' (Debian packages orthanc, orthanc-dicomweb)"


class OrthancMissing(DrasclrError):
    """Orthanc or its DICOMweb plugin is not installed."""


def find_orthanc() -> Path:
    """The Orthanc executable."""
    for name in ORTHANC_EXECUTABLES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise OrthancMissing(f"Orthanc is not installed; {INSTALL_HINT}")


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin library of the Debian package (its folder differs between releases)."""
    for folder in PLUGIN_DIRS:
        for candidate in sorted(Path(folder).glob(f"{DICOMWEB_PLUGIN}*")):
            return candidate
    raise OrthancMissing(f"the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}) is not in {' or '.join(PLUGIN_DIRS)}; {INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_config(storage: Path, port: int, username: str, password: str, plugin: Path, name: str) -> dict:
    """Orthanc's JSON configuration: loopback only, one user, DICOMweb at ``/dicom-web``."""
    return {
        "Name": name,
        "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"),
        "StorageCompression": False,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "DicomServerEnabled": False,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False},
    }


class OrthancServer:
    """One Orthanc process on ``127.0.0.1:<port>`` storing into ``storage`` (created).

    Call :meth:`start` and :meth:`stop`. The configuration (with the password) is written to
    ``<storage>/orthanc.json``, readable by the owner only.

    Args:
        storage: folder for the database, the configuration and the log.
        port: HTTP port; a free one when None.
        username: the one registered user.
        password: that user's password; a random one when None (see :attr:`password`).
        name: Orthanc's name (shown in its web interface).
    """

    def __init__(self, storage: str | Path, port: int | None = None, username: str = "drasclr",
                 password: str | None = None, name: str = "drasclr") -> None:
        self.storage = Path(storage).resolve()
        self.port = port or free_port()
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.name = name
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Orthanc's REST root (its own API and web interface)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root to give MONAI Label as ``--studies``."""
        return self.url + DICOMWEB_ROOT

    @property
    def log_path(self) -> Path:
        return self.storage / "orthanc.log"

    def connection(self, timeout_s: float = 30.0) -> PacsConnection:
        return PacsConnection(self.dicomweb_url, self.username, self.password, timeout_s)

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until it answers with these credentials.

        Raises:
            OrthancMissing: Orthanc or the plugin is not installed.
            DrasclrError: Orthanc exited or did not answer within ``timeout_s`` (its log is quoted).
        """
        executable, plugin = find_orthanc(), find_dicomweb_plugin()
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.storage / "orthanc.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(orthanc_config(self.storage, self.port, self.username, self.password, plugin, self.name), fh, indent=2)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen([str(executable), str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def stop(self, timeout_s: float = 20.0, graceful: bool = True) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``timeout_s``); the storage folder stays.

        ``graceful=False`` kills at once (a throw-away test PACS: saves Orthanc's 2 s shutdown).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait(self) -> int:
        """Block until Orthanc exits (the foreground ``drasclr pacs-orthanc``); returns its exit code."""
        assert self.process is not None, "start() first"
        return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise DrasclrError(f"Orthanc exited with code {self.process.returncode} on port {self.port}:\n{self.log_tail()}")
            try:
                answer = requests.get(f"{self.url}/system", auth=(self.username, self.password), timeout=2)
                if answer.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise DrasclrError(f"Orthanc did not answer on port {self.port} within {timeout_s:g} s:\n{self.log_tail()}")
