"""Export the encoder of a pretraining checkpoint as encoder.pt + encoder.json (docs/formats.md).

A finished run exports itself; use this for an intermediate checkpoints/last.pt, or to export a
run again. The output loads with drasclr_monailabel.models.export.load_encoder.

Examples:
  drasclr export --checkpoint runs/full/checkpoints/last.pt --out exports/step50k
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export the encoder of a pretraining checkpoint (encoder.pt + encoder.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoints/last.pt or final.pt of a pretraining run")
    parser.add_argument("--out", type=Path, required=True, help="folder to write encoder.pt and encoder.json into")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.ssl.export import export_checkpoint

    weights, metadata = export_checkpoint(args.checkpoint, args.out)
    print(f"encoder exported to {weights} and {metadata}")
    return 0
