"""Quantify emphysema on a chest CT: %LAA-950/-910/-856, Perc15, mean HU and lung volume for the
whole lung, each lung and their upper/middle/lower thirds, plus LAA cluster statistics.

Writes into --out: <id>_emphysema.json (all numbers), <id>_emphysema.csv (one row per region),
<id>_emphysema.png (overlay, histogram, zones, clusters) and <id>_lungs.nii.gz (the lung mask that
was measured, on the CT's grid: 0 outside, 1 right, 2 left); with --pseudo-labels also
<id>_pseudo_labels.nii.gz (0 background, 1 centrilobular, 2 panlobular, 3 paraseptal; 0/1 with
--binary) and with --cip <id>_pseudo_labels_cip.nrrd (Chest Imaging Platform label values).
Everything is computed before anything is written; on an error nothing is written.

Examples:
  drasclr quantify scan.nii.gz --out results/
  drasclr quantify /data/dicom/series_001/ --lungs lungs.nii.gz --mask prediction.nii.gz --out results/
  drasclr quantify scan.nrrd --pseudo-labels --out results/
  drasclr quantify cache/case_001/ --out results/        # a preprocessed scan (1 mm, with a warning)
"""

from __future__ import annotations

import argparse

NAME = "quantify"
HELP = "emphysema quantification (%LAA, Perc15, zones, clusters) with JSON, CSV and PNG report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", help="CT: NIfTI / NRRD / MHA file, a DICOM series folder, or a preprocessed cache "
                                     "scan folder (<id>/ with <id>_image.npy, _lung.npy, _qa.json)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--lungs", metavar="FILE",
                        help="lung mask on the CT's grid (0 outside, 1 right, 2 left); default: segment the lungs "
                             "(or the cache's _lung.npy)")
    parser.add_argument("--mask", metavar="FILE",
                        help="emphysema mask on the CT's grid (>0 emphysema, or 1-3 subtypes) to report as well")
    parser.add_argument("--id", dest="scan_id", help="name prefix of the output files (default: from the scan's name)")
    parser.add_argument("--pseudo-labels", action="store_true", help="also write LAA-cluster pseudo-labels")
    parser.add_argument("--binary", action="store_true",
                        help="pseudo-labels as plain emphysema (1) without subtypes (implies --pseudo-labels)")
    parser.add_argument("--cip", action="store_true",
                        help="also write the pseudo-labels as a Chest Imaging Platform label map (implies --pseudo-labels)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    import numpy as np

    from drasclr_monailabel.emphysema import PseudoLabelOptions, laa_pseudo_labels, quantify, to_cip_labelmap
    from drasclr_monailabel.emphysema.cache_input import CACHE_RESAMPLED_WARNING, is_cache_scan, read_cache_scan
    from drasclr_monailabel.emphysema.label_input import read_label_map
    from drasclr_monailabel.emphysema.report import render_report
    from drasclr_monailabel.errors import InputError, NoLungsError
    from drasclr_monailabel.io import read_ct
    from drasclr_monailabel.io.readers import scan_id_from_path

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    from_cache = is_cache_scan(args.scan)
    volume, cache_lungs = read_cache_scan(args.scan) if from_cache else (read_ct(args.scan), None)
    scan_id = args.scan_id or scan_id_from_path(args.scan)
    if args.lungs or cache_lungs is not None:
        source = args.lungs or Path(args.scan) / f"{Path(args.scan).name}_lung.npy"
        lungs = read_label_map(args.lungs, volume) if args.lungs else cache_lungs
        if lungs.min() < 0 or lungs.max() > 2:
            raise InputError(source, f"has values {int(lungs.min())}..{int(lungs.max())}; "
                                     "a lung mask holds 0 (outside), 1 (right), 2 (left)")
        if not np.any(lungs):
            raise NoLungsError(source, "the lung mask is empty")
        lungs = lungs.astype(np.uint8)
    else:
        from drasclr_monailabel.anatomy.lung_mask import segment_lungs

        lungs = segment_lungs(volume)
    mask = read_label_map(args.mask, volume) if args.mask else None

    report = quantify(volume, lungs, mask)
    if from_cache:
        report = replace(report, warnings=[*report.warnings, CACHE_RESAMPLED_WARNING])
    labels = None
    if args.pseudo_labels or args.binary or args.cip:
        labels = laa_pseudo_labels(volume, lungs, replace(PseudoLabelOptions(), binary=args.binary))
    cip = to_cip_labelmap(labels, lungs, volume.spacing, volume.direction, binary=args.binary) if args.cip else None

    rendered = render_report(report, volume, lungs, mask)

    out.mkdir(parents=True, exist_ok=True)
    _write_labels(out / f"{scan_id}_lungs.nii.gz", lungs, volume)
    if labels is not None:
        _write_labels(out / f"{scan_id}_pseudo_labels.nii.gz", labels, volume)
    if cip is not None:
        _write_labels(out / f"{scan_id}_pseudo_labels_cip.nrrd", cip, volume)
    files = rendered.write(out, scan_id)
    whole = report.region("whole").densitometry
    print(f"{scan_id}: lung {report.region('whole').volume_l:.2f} L, %LAA-950 {whole.laa950_percent:.2f} %, "
          f"Perc15 {whole.perc15_hu:.0f} HU")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"wrote {files.json}, {files.csv.name}, {files.png.name}, {scan_id}_lungs.nii.gz")
    return 0


def _write_labels(dest, labels, volume) -> None:
    """Write a label array with the CT's geometry, atomically."""
    import SimpleITK as sitk

    from drasclr_monailabel.utils.atomic import write_with

    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    write_with(dest, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
