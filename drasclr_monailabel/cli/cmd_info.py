"""Print what was read from a CT file or DICOM series folder, or refuse it with one clear line.

Examples:
  drasclr info scan.nii.gz
  drasclr info /data/dicom/series_001/
"""

from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "describe a CT file or DICOM series folder (size, spacing, orientation, HU range)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="NIfTI / NRRD / MHA file or a DICOM series folder")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.io import read_ct

    volume = read_ct(args.path)
    summary = {
        "source": volume.source,
        "description": volume.description,
        "modality": volume.modality,
        "size_xyz": list(volume.shape_xyz),
        "spacing_mm_xyz": [round(s, 4) for s in volume.spacing],
        "extent_mm_xyz": [round(e, 1) for e in volume.extent_mm],
        "orientation": volume.orientation,
        "origin_mm": [round(o, 2) for o in volume.origin],
        "hu_min": int(volume.hu.min()),
        "hu_max": int(volume.hu.max()),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        text = "x".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {text}")
    return 0
