"""Write the MONAI Label emphysema app folder, as `monailabel apps --download` does for MONAI's
sample apps, then serve it with `monailabel start_server --app DIR`.

The app is the package's own (the same files as apps/emphysema in a checkout), so it works from an
installed wheel. A folder holding an app of another version is refused unless --overwrite is given;
other files in it stay.

Examples:
  drasclr app --out apps/emphysema_local
  monailabel start_server --app apps/emphysema_local --studies /data/ct --conf pretrained encoder/
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

    written = write_app(args.out, overwrite=args.overwrite)
    print(f"wrote the emphysema app ({len(written)} files) to {args.out}; serve it with:\n"
          f"  monailabel start_server --app {args.out} --studies <CT folder> --conf pretrained <encoder folder>")
    return 0
