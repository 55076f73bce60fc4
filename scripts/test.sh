#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (unit and integration) on this machine.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k io -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
