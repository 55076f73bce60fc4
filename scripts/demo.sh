#!/usr/bin/env bash
# Set up .venv if needed, then run the main job on the embedded default: fetch real sample CT,
# make a small synthetic cohort, preprocess, pretrain briefly and start the MONAI Label server with
# the emphysema app. Outputs go to ./work/demo; extra arguments go to `drasclr demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/drasclr demo --workdir work/demo "$@"
