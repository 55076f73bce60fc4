"""Loads the fixture modules in tests/fixtures/ and isolates the user cache per test session.

Real sample CT is fetched once per machine into ``$DRASCLR_TEST_CACHE`` (default
``~/.cache/drasclr-tests``) so that repeated runs work offline; everything else a test writes
goes to pytest's tmp_path.
"""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

import tests.fixtures as _fixtures

pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules(_fixtures.__path__)]

os.environ.setdefault("DRASCLR_CACHE", str(Path(os.environ.get("DRASCLR_TEST_CACHE", Path.home() / ".cache" / "drasclr-tests"))))
os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
