"""Write the MONAI Label emphysema app folder, as `monailabel apps --download` does for MONAI's
sample apps, then serve it with `monailabel start_server --app DIR`.

The app is the package's own (the same files as apps/emphysema in a checkout), so it works from an
installed wheel. A folder holding an app of another version is refused unless --overwrite is given;
other files in it stay. It also writes DIR/logs/logging.json (MONAI Label's logging config, logging
to DIR/logs/app.log): given as --log_config, MONAI Label leaves no temporary copy behind per start.

Examples:
  drasclr app --out apps/emphysema_local
  monailabel start_server --app apps/emphysema_local --studies /data/ct --conf pretrained encoder/ \
      --log_config apps/emphysema_local/logs/logging.json
  drasclr app --out apps/emphysema_local --overwrite      # after upgrading the package
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "app"
HELP = "write the MONAI Label emphysema app folder (for monailabel start_server --app)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="app folder to write (main.py, lib/configs/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace app files of another version")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.packaged import write_app
    from drasclr_monailabel.server_log_config import server_log_config

    written = write_app(args.out, overwrite=args.overwrite)
    log_config = server_log_config(args.out)
    print(f"wrote the emphysema app ({len(written)} files) to {args.out}; serve it with:\n"
          f"  monailabel start_server --app {args.out} --studies <CT folder> --conf pretrained <encoder folder> "
          f"--log_config {log_config}")
    return 0
