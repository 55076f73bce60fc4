"""Loads the fixture modules in tests/fixtures/ and isolates the user cache per test session.

Real sample CT is fetched once per machine into ``$DRASCLR_TEST_CACHE`` (default
``~/.cache/drasclr-tests``) so that repeated runs work offline; everything else a test writes
goes to pytest's tmp_path. Temporary files of the tools the tests start (MONAI Label's logging
configs, torchrun's rendezvous folders) go to a folder under pytest's base temp as well, which
pytest prunes, instead of piling up in the system's /tmp.
"""

from __future__ import annotations

import os
import pkgutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.fixtures as _fixtures

pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules(_fixtures.__path__)]

os.environ.setdefault("DRASCLR_CACHE", str(Path(os.environ.get("DRASCLR_TEST_CACHE", Path.home() / ".cache" / "drasclr-tests"))))
os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``TMPDIR`` (inherited by every subprocess) and this process's ``tempfile`` at one
    folder of the session's pytest base temp; restore both afterwards."""
    folder = tmp_path_factory.mktemp("system_tmp", numbered=False)
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield folder
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = saved_env
