"""Draw docs/images/synth_hu_overlap.png: HU histograms of normal lung and of each subtype in a synthetic cohort.

Reads a cohort written by `drasclr synth` (images/, labels/, lungs/, manifest.csv) and pools the
voxels of every scan: normal lung and each subtype's labelled voxels, with the -950 HU threshold
marked and each class's share below it in the legend. Overlapping curves are why a density
threshold cannot tell the subtypes apart.

Usage (from the repository root):
  drasclr synth --n 12 --source lidc0001_image --out /tmp/synth_lidc
  python docs/images/synth_hu_overlap.py --cohort /tmp/synth_lidc --out docs/images/synth_hu_overlap.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from drasclr_monailabel.data.hu_overlap import HU_LOW, HuHistograms  # noqa: E402
from drasclr_monailabel.data.synth_cohort import LAA_THRESHOLD_HU, MANIFEST_NAME  # noqa: E402

COLOURS = {"normal": "#7f7f7f", "centrilobular": "#1f77b4", "panlobular": "#d62728", "paraseptal": "#2ca02c"}
SHOWN = (-1100, -600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="folder written by drasclr synth")
    parser.add_argument("--out", type=Path, default=Path("docs/images/synth_hu_overlap.png"))
    args = parser.parse_args()

    with open(args.cohort / MANIFEST_NAME, newline="") as fh:
        rows = list(csv.DictReader(fh))
    histograms = HuHistograms()
    for row in rows:
        hu, label, lungs = (sitk.GetArrayFromImage(sitk.ReadImage(str(args.cohort / row[k]))) for k in ("image", "label", "lungs"))
        histograms.add(hu, lungs, label)

    fig, axis = plt.subplots(figsize=(9, 5))
    hu_axis = np.arange(SHOWN[0], SHOWN[1] + 1)
    for name in histograms.present():
        counts = histograms.counts[name][SHOWN[0] - HU_LOW:SHOWN[1] - HU_LOW + 1].astype(float)
        density = np.convolve(counts, np.ones(9) / 9, mode="same") / max(histograms.counts[name].sum(), 1)
        share = 100 * histograms.share_below(name, LAA_THRESHOLD_HU)
        axis.plot(hu_axis, density, color=COLOURS[name], label=f"{name} ({share:.0f} % below {LAA_THRESHOLD_HU} HU)")
    axis.axvline(LAA_THRESHOLD_HU, color="black", linestyle="--", linewidth=1)
    axis.set_xlabel("HU")
    axis.set_ylabel("share of the class's voxels per HU")
    axis.set_title(f"{len(rows)} synthetic scans from {rows[0]['source']}: voxels pooled per class")
    axis.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
