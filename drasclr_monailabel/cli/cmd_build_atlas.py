"""Build a lung atlas (1 mm lung labels + landmark grid, and lobes where given) from real CT or phantoms.

Each scan's lungs are segmented, registered affinely to a reference (the median-volume subject
among those that cover the whole lungs), averaged and thresholded (a partial scan counts where it
was scanned); the average is freed of the reference's size and pose and the step is repeated
once. The landmark grid (32^3 patches, step 26, >10% lung, about 600 at most) is laid over the
result. Output (docs/formats.md): atlas.json, lungs.nii.gz, landmarks.csv, lobes.nii.gz.

INPUT is a CSV manifest (column 'image', optional 'id', 'lobes', 'lobe_names'), a folder of CT
files / DICOM series folders, or a folder holding manifest.csv. Scans that cannot be read or show
no lungs are skipped with a warning.

Examples:
  drasclr build-atlas cohort/manifest.csv --out my_atlas/
  drasclr sample-data && drasclr build-atlas --sample-data --out drasclr_monailabel/anatomy/atlas   # the shipped atlas
  drasclr build-atlas --phantom --n 8 --out phantom_atlas/
  drasclr preprocess scans/ --out cache/ --atlas my_atlas/
"""

from __future__ import annotations

import argparse

from drasclr_monailabel.cli.arguments import whole_number

NAME = "build-atlas"
HELP = "build a lung atlas with its landmark grid from a cohort (or from phantoms)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help="CSV manifest, folder of scans, or folder with manifest.csv")
    parser.add_argument("--out", required=True, help="atlas folder to write (atlas.json is written last)")
    parser.add_argument("--sample-data", action="store_true",
                        help="build from the real sample CTs (LIDC-IDRI-0001 with lobes, lung1, lung2; fetch them first with "
                             "'drasclr sample-data'): the shipped default atlas")
    parser.add_argument("--phantom", action="store_true", help="build from synthetic thorax phantoms instead of INPUT")
    parser.add_argument("--n", type=whole_number(1), default=8, help="number of phantoms with --phantom (default 8)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom (default 0)")
    parser.add_argument("--name", help="atlas name, the start of its id (default realct3, phantom<N> or cohort)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run(args: argparse.Namespace) -> int:
    import logging

    import drasclr_monailabel
    from drasclr_monailabel.anatomy.build_atlas import build_atlas, cohort_subjects, phantom_subjects, sample_entries
    from drasclr_monailabel.anatomy.inputs import list_scans
    from drasclr_monailabel.errors import ConfigError

    if sum([args.phantom, args.sample_data, args.input is not None]) != 1:
        raise ConfigError("build-atlas", "give exactly one of INPUT, --sample-data or --phantom")
    if args.sample_data:
        entries = sample_entries()
        subjects = list(cohort_subjects(entries))
        name = args.name or "realct3"
        provenance = {"source": "sample-data", "scans": [e.scan_id for e in entries]}
    elif args.phantom:
        subjects = list(phantom_subjects(args.n, args.first_seed))
        name = args.name or f"phantom{args.n}"
        provenance = {"source": "phantom", "n": args.n, "first_seed": args.first_seed}
    else:
        subjects = list(cohort_subjects(list_scans(args.input)))
        name = args.name or "cohort"
        provenance = {"source": str(args.input)}
    provenance["package_version"] = drasclr_monailabel.__version__
    atlas = build_atlas(subjects, args.out, name, provenance, progress=not args.no_progress)
    logging.getLogger(__name__).info("atlas %s: %d subjects, %d landmarks (lung fraction > %.2f), written to %s",
                                     atlas.atlas_id, len(subjects), atlas.n_landmarks, atlas.landmarks.min_lung_fraction, args.out)
    return 0
