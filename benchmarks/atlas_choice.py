"""Which atlas to ship: registration quality of candidate atlases on real CT that is not in them.

Every real chest CT the sample data holds (LIDC-IDRI-0001, full chest, 2.5 mm; pyradiomics lung2,
full chest, 5 mm; lung1, upper chest, 5 mm) is held out in turn; atlases are built with
``build_atlas`` from the others (each full scan alone, and all others together) and the held-out
scan goes through the same pipeline as ``drasclr preprocess``. For comparison the former phantom
atlas (8 thorax phantoms) and the shipped atlas (all three scans, so every scan is in it) are
measured on every scan.

Per (atlas, scan): lung Dice of the warped atlas and the scan's lungs (right, left), landmarks
valid, and the share of valid landmarks whose 32^3 patch holds more than 10 % lung.

    python benchmarks/atlas_choice.py --out benchmarks/results/atlas_choice.json

``--subject-registration preprocess`` builds the candidates with partial subjects registered as
``drasclr preprocess`` registers a scan, instead of as the shipped atlas was built.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCANS = {"lidc0001": "lidc0001_image", "lung2": "lung2_image", "lung1": "lung1_image"}
FULL_SCANS = ("lidc0001", "lung2")


def candidates(held_out: str) -> dict[str, tuple[str, ...]]:
    """Atlas name -> the scans it is built from, none of them ``held_out``."""
    others = tuple(s for s in SCANS if s != held_out)
    out = {f"{s} alone": (s,) for s in FULL_SCANS if s != held_out}
    out["+".join(others)] = others
    return out


def build(scans: tuple[str, ...], folder: Path, registration: Any) -> Any:
    """An atlas from the named sample scans (LIDC with its lobes), as ``drasclr build-atlas`` builds it
    but for how subjects are registered to the template (``registration``)."""
    from drasclr_monailabel.anatomy.build_atlas import build_atlas, cohort_subjects, sample_entries

    entries = [e for e in sample_entries() if e.scan_id in scans]
    return build_atlas(list(cohort_subjects(entries)), folder, "-".join(scans), progress=False, registration=registration)


def measure(atlas: Any, scan: str) -> dict[str, Any]:
    """One held-out scan through the pipeline against ``atlas``."""
    import numpy as np

    from drasclr_monailabel.anatomy.landmarks import patch_fractions
    from drasclr_monailabel.anatomy.pipeline import preprocess_volume
    from drasclr_monailabel.data.sample_data import cached_sample_path
    from drasclr_monailabel.io.readers import read_ct

    started = time.perf_counter()
    result = preprocess_volume(read_ct(cached_sample_path(SCANS[scan])), atlas)
    fractions = patch_fractions(result.lungs > 0, result.landmarks[result.valid])
    registration = result.registration
    return {"atlas": atlas.atlas_id, "scan": scan, "dice": round(registration.dice, 3), "dice_right": round(registration.dice_right, 3),
            "dice_left": round(registration.dice_left, 3), "landmarks": len(result.valid), "valid": int(result.valid.sum()),
            "valid_over_10_percent_lung": round(float(np.mean(fractions > 0.1)), 3), "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--subject-registration", choices=["atlas", "preprocess"], default="atlas",
                        help="how the candidate atlases register their subjects: as drasclr build-atlas does (atlas, "
                             "build_atlas.SUBJECT_REGISTRATION) or as drasclr preprocess registers a scan (preprocess)")
    args = parser.parse_args()

    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.anatomy.build_atlas import SUBJECT_REGISTRATION, build_atlas, phantom_subjects
    from drasclr_monailabel.anatomy.registration import RegistrationSettings
    from drasclr_monailabel.utils.atomic import write_json

    registration = SUBJECT_REGISTRATION if args.subject_registration == "atlas" else RegistrationSettings()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        phantom = build_atlas(list(phantom_subjects(8)), Path(tmp) / "phantom8", "phantom8", progress=False,
                              registration=registration)
        shipped = load_default_atlas()
        for scan in SCANS:
            for label, atlas in (("phantom8", phantom), ("shipped (all three)", shipped)):
                rows.append({"candidate": label, "held_out": label == "phantom8", **measure(atlas, scan)})
            for label, scans in candidates(scan).items():
                atlas = build(scans, Path(tmp) / f"{scan}-{label.replace(' ', '_')}", registration)
                rows.append({"candidate": label, "held_out": True, **measure(atlas, scan)})
            for row in rows[-4:]:
                print(f"{row['scan']:9s} {row['candidate']:22s} Dice {row['dice']:.3f} (R {row['dice_right']:.3f}, L {row['dice_left']:.3f}) "
                      f"valid {row['valid']}/{row['landmarks']}, >10% lung {row['valid_over_10_percent_lung']:.3f}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"benchmark": "atlas_choice", "command": " ".join(["python", "benchmarks/atlas_choice.py", *sys.argv[1:]]),
                          "subject_registration": args.subject_registration, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
