#!/usr/bin/env bash
# Create the project's virtual environment in .venv (inside the checkout, git-ignored) and install
# the package with its test extras. Idempotent: a stamp keyed on the dependency files skips the
# install when nothing changed. Needs Python >= 3.10 with venv (PYTHON overrides the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: need Python >= 3.10 with the venv module (set PYTHON=/path/to/python3)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into .venv (first run takes several minutes: torch, MONAI Label, nnU-Net)"
  .venv/bin/python -m pip install --quiet --upgrade pip wheel setuptools
  .venv/bin/python -m pip install --quiet --progress-bar off -e ".[test]"
  .venv/bin/python -c "import monailabel.app, nnunetv2, drasclr_monailabel" >/dev/null
  rm -f .venv/.installed-*
  touch "$stamp"
fi
