"""Export the app's fine-tuned emphysema model as a MONAI Bundle (the MONAI Model Zoo format), to
hand it on or run it outside MONAI Label.

MODEL is the app's model folder (default <studies>/.drasclr/model, holding emphysema.pt) or a
checkpoint file. The bundle holds configs/metadata.json, configs/inference.json, models/model.pt
(tensors only) and docs/README.md; it runs wherever this package is installed.

Examples:
  drasclr export-bundle /data/ct/.drasclr/model --out bundles/emphysema
  python -m monai.bundle run --config_file bundles/emphysema/configs/inference.json \\
      --bundle_root bundles/emphysema --dataset_dir scans/ --output_dir results/
  python -m monai.bundle verify_net_in_out network_def --meta_file bundles/emphysema/configs/metadata.json \\
      --config_file bundles/emphysema/configs/inference.json --device cpu --n 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export-bundle"
HELP = "write the app's fine-tuned emphysema model as a MONAI Bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the app's model folder (holding emphysema.pt) or a checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.bundle import export_bundle

    out = export_bundle(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote the MONAI Bundle to {out}; run it with:\n"
          f"  python -m monai.bundle run --config_file {out / 'configs' / 'inference.json'} --bundle_root {out} "
          f"--dataset_dir <CT folder> --output_dir <results folder>")
    return 0
