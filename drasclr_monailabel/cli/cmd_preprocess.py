"""Preprocess CT scans into the cache that pretraining reads (docs/formats.md, docs/preprocessing.md).

Per scan: lung mask, affine registration to the atlas, 1 mm isotropic int16 volume cropped to
the lungs plus a margin, lung mask on the same grid, the atlas landmarks mapped into the scan and
their validity, a QA JSON (written last: its presence marks the scan complete) and a QA PNG.

INPUT is a CSV manifest (column 'image', optional 'id'; relative paths resolve against the
CSV's folder; the synthetic cohort's manifest.csv works as is), a folder of CT files and DICOM
series folders (or a folder holding manifest.csv), or a single scan.

Re-running skips finished scans and redoes interrupted ones. --shard i/N processes every N-th
scan starting at i (0-based), so N jobs split a cohort, e.g. a SLURM array:
  #SBATCH --array=0-15
  drasclr preprocess cohort.csv --out cache/ --shard $SLURM_ARRAY_TASK_ID/16 --workers $SLURM_CPUS_PER_TASK

Exit status: 0 when every scan is done or skipped, 1 when some scans failed (each is logged
with its reason and listed in summary.json; the others are done), 2 for a usage error
(e.g. INPUT missing, a bad option, an unreadable atlas).

Examples:
  drasclr preprocess scans/ --out cache/
  drasclr preprocess cohort/manifest.csv --out cache/ --workers 8
  drasclr preprocess scans/ --out cache/ --atlas my_atlas/ --interpolation bspline
"""

from __future__ import annotations

import argparse
import os

from drasclr_monailabel.cli.arguments import whole_number

NAME = "preprocess"
HELP = "lung mask, atlas registration and landmarks for many scans, into the pretraining cache"


def _shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be i/N with whole numbers, e.g. 0/4, got '{text}'")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"needs N >= 1 and 0 <= i < N, got '{text}'")
    return index, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="CSV manifest, folder of scans (or holding manifest.csv), or one scan")
    parser.add_argument("--out", required=True, help="cache folder (created; finished scans in it are skipped)")
    parser.add_argument("--workers", type=whole_number(1), default=os.cpu_count() or 1,
                        help=f"local worker processes (default: number of cores, {os.cpu_count()} here)")
    parser.add_argument("--shard", type=_shard, help="process only shard i of N (0-based), e.g. 0/4")
    parser.add_argument("--atlas", help="atlas folder (default: the atlas shipped with the package)")
    parser.add_argument("--interpolation", choices=["linear", "bspline"], default="linear",
                        help="image resampling to 1 mm: linear (default, 1-3 s per scan) or cubic B-spline "
                             "(the DrasCLR reference, about 19 s per 512x512x400 scan on 2 cores)")
    parser.add_argument("--lung-model", metavar="FILE",
                        help="TorchScript lung model to use instead of the classical lung mask (contract in docs/anatomy.md)")
    parser.add_argument("--require-lung-end", action="store_true",
                        help="refuse scans whose lungs run through both the first and last slice (neither apex nor base: "
                             "landmark heights uncertain, docs/anatomy.md) instead of keeping them with a warning")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.anatomy.batch import run_preprocess
    from drasclr_monailabel.anatomy.inputs import list_scans
    from drasclr_monailabel.anatomy.lung_model import load_model
    from drasclr_monailabel.anatomy.pipeline import PipelineSettings

    entries = list_scans(args.input)
    if args.lung_model:
        load_model(args.lung_model)  # a bad model file is a usage error, not a failure of every scan
    settings = PipelineSettings(interpolation=args.interpolation, lung_model=args.lung_model, require_lung_end=args.require_lung_end)
    summary = run_preprocess(entries, args.out, atlas_dir=args.atlas, settings=settings, workers=args.workers,
                             shard=args.shard, progress=not args.no_progress)
    print(f"preprocess: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
          f"of {summary['n_scans']} scans{' in shard ' + summary['shard'] if summary['shard'] else ''}; summary in {args.out}")
    for failure in summary["failures"]:
        print(f"  failed {failure['id']}: {failure['reason']}")
    return 1 if summary["failed"] else 0
