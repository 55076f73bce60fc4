"""Run the whole pipeline on real sample CT and start the MONAI Label emphysema app.

Steps (each skipped when its output exists, so a second run goes straight to the server):
  1. fetch the real sample chest CT (pyradiomics lung1/lung2, from PyPI; checksummed, cached)
  2. make a small synthetic emphysema cohort from it (drasclr synth)
  3. preprocess it: lung mask, atlas registration, landmarks (drasclr preprocess)
  4. pretrain DrasCLR briefly and export the encoder (drasclr pretrain, drasclr export)
  5. put the unlabelled images into a MONAI Label datastore, write the app folder (WORKDIR/app) and
     start `monailabel start_server --app WORKDIR/app` on it with the pretrained encoder

Examples:
  drasclr demo --workdir work/demo
  drasclr demo --workdir work/demo --port 8001 --host 0.0.0.0
  drasclr demo --workdir /tmp/demo --no-server --set train.max_steps=20
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NAME = "demo"
HELP = "sample CT -> synthetic cohort -> preprocess -> pretrain -> MONAI Label server (the README's main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("work/demo"), help="folder for every output (default work/demo)")
    parser.add_argument("--n", type=int, default=8, help="scans in the synthetic cohort (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the pretraining recipe, e.g. --set train.max_steps=20 (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    parser.add_argument("--no-server", action="store_true", help="stop after preparing everything; print the server command")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.demo import DemoPlan, run_demo, server_command, slicer_instructions
    from drasclr_monailabel.errors import ConfigError

    if args.n < 1:
        raise ConfigError("--n", f"needs at least 1 scan, got {args.n}")
    plan = DemoPlan(workdir=args.workdir.resolve(), n_scans=args.n, seed=args.seed, pretrain_overrides=tuple(args.overrides))
    run_demo(plan)
    command = server_command(plan, args.host, args.port)
    if args.no_server:
        print("everything is ready; start the server with:\n  " + " ".join(command))
        return 0
    print(slicer_instructions(args.host, args.port), flush=True)
    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    # MONAI Label starts helpers with "python" from PATH: make that this interpreter (the venv's),
    # also when the venv is not activated (scripts/demo.sh runs .venv/bin/drasclr directly).
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # The server runs in this interpreter, not through the monailabel script: that script puts the
    # folder above its venv on PYTHONPATH, where a checkout beside the venv would shadow the
    # installed package.
    os.execv(sys.executable, [sys.executable, "-m", "monailabel.main", *command[1:]])
    return 0
