"""Build a lung atlas (1 mm lung labels + landmark grid) from a cohort or from phantoms.

Each scan's lungs are segmented, registered affinely to a reference (the median-volume subject),
averaged and thresholded; the average is freed of the reference's size and pose and the step is
repeated once. The landmark grid (32^3 patches, step 26, >10% lung, about 600 at most) is laid
over the result. Output (docs/formats.md): atlas.json, lungs.nii.gz, landmarks.csv.

INPUT is a CSV manifest (column 'image', optional 'id'), a folder of CT files / DICOM series
folders, or a folder holding manifest.csv. Scans that cannot be read or show no lungs are
skipped with a warning.

Examples:
  drasclr build-atlas cohort/manifest.csv --out my_atlas/
  drasclr build-atlas --phantom --n 8 --out drasclr_monailabel/anatomy/atlas   # the shipped atlas
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
    parser.add_argument("--phantom", action="store_true", help="build from synthetic thorax phantoms instead of INPUT")
    parser.add_argument("--n", type=whole_number(1), default=8, help="number of phantoms with --phantom (default 8)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom (default 0)")
    parser.add_argument("--name", help="atlas name, the start of its id (default phantom<N> or cohort)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run(args: argparse.Namespace) -> int:
    import logging

    import drasclr_monailabel
    from drasclr_monailabel.anatomy.build_atlas import build_atlas, cohort_subjects, phantom_subjects
    from drasclr_monailabel.anatomy.inputs import list_scans
    from drasclr_monailabel.errors import ConfigError

    if args.phantom == (args.input is not None):
        raise ConfigError("build-atlas", "give either INPUT or --phantom (not both, not neither)")
    if args.phantom:
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
