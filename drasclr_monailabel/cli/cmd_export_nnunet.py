"""Export annotated chest CT to an nnU-Net raw dataset (nnUNet_raw/DatasetXXX_Name).

Cases come from the emphysema app's datastore (its studies folder: images with a final label in
labels/final/) or from a manifest CSV (columns image, optional id and label, e.g. the synthetic
cohort's manifest.csv). Every case is written on the anatomy pipeline's 1 mm lung-cropped grid
(the DrasCLR encoder's resolution) as imagesTr/<case>_0000.nii.gz (HU, channel "CT"), with
--coordinates also _0001.._0003 (atlas x, y, z, channel "noNorm"), and labelsTr/<case>.nii.gz
(consecutive class values). A label that is not on its image's grid is refused with one line
naming the file. Re-running skips unchanged cases; dataset.json is written last.

Examples:
  drasclr export-nnunet --datastore studies/ --out $nnUNet_raw --dataset-id 501 --name Emphysema
  drasclr export-nnunet --manifest cohort/manifest.csv --dataset-id 501 --name Emphysema --labels subtypes --coordinates
then:
  nnUNetv2_plan_and_preprocess -d 501 --verify_dataset_integrity -c 3d_fullres
  nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerDrasCLR      (see drasclr nnunet-env)
"""

from __future__ import annotations

import argparse

NAME = "export-nnunet"
HELP = "export a labelled datastore or manifest to an nnU-Net raw dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--datastore", metavar="STUDIES_DIR", help="studies folder of the app's datastore (final labels)")
    source.add_argument("--manifest", metavar="CSV", help="CSV with image, optional id and label columns")
    parser.add_argument("--out", metavar="NNUNET_RAW", help="nnUNet_raw folder (default: $nnUNet_raw)")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1-999 (e.g. 501)")
    parser.add_argument("--name", default="Emphysema", help="dataset name (default Emphysema)")
    parser.add_argument("--labels", choices=["binary", "subtypes"], default="binary",
                        help="binary emphysema (any label > 0) or the three subtypes (default binary)")
    parser.add_argument("--coordinates", action="store_true",
                        help="add the atlas x, y, z coordinate channels (the location the DrasCLR encoder is conditioned on)")
    parser.add_argument("--spacing", type=int, default=1, metavar="MM",
                        help="grid spacing in whole mm (default 1, the encoder's pretraining resolution; coarser only for quick checks)")
    parser.add_argument("--atlas", metavar="DIR", help="atlas folder for registration and coordinates (default: the shipped atlas)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="also export images without a label to imagesTs (inputs for nnUNetv2_predict)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tqdm import tqdm

    from drasclr_monailabel.errors import ConfigError
    from drasclr_monailabel.nnunet.export import ExportOptions, export_dataset
    from drasclr_monailabel.nnunet.sources import (
        cases_from_datastore,
        cases_from_manifest,
    )
    from drasclr_monailabel.segmentation.labels import BINARY, SUBTYPES, LabelSet

    out = args.out or os.environ.get("nnUNet_raw")
    if not out:
        raise ConfigError("--out", "is required when the nnUNet_raw environment variable is not set")
    source = args.datastore or args.manifest
    cases = cases_from_datastore(source) if args.datastore else cases_from_manifest(source)
    options = ExportOptions(labels=LabelSet(BINARY if args.labels == "binary" else SUBTYPES),
                            coordinates=args.coordinates, unlabelled=args.unlabelled, spacing_mm=args.spacing,
                            atlas=Path(args.atlas) if args.atlas else None)

    def progress(items):
        return tqdm(items, unit="case", desc="export-nnunet", disable=args.no_progress)

    summary = export_dataset(cases, Path(out), args.dataset_id, args.name, options, str(Path(source).resolve()), progress)
    for line in summary.lines():
        print(line)
    return 0
