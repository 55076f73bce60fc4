"""Draw docs/images/synth_examples.png: one synthetic scan per emphysema subtype from LIDC-IDRI-0001.

Columns: the synthetic CT (lung window), the true label over it, the plain -950 HU threshold over
it with the true label's outline, and a coronal view of the label (zone predominance).

Usage (from the repository root):
  python docs/images/synth_examples.py --out docs/images/synth_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from drasclr_monailabel.anatomy.lung_mask import segment_lungs  # noqa: E402
from drasclr_monailabel.data.lesions import SUBTYPE_NAMES  # noqa: E402
from drasclr_monailabel.data.synth_cohort import RealSource, SynthSettings, synthesize_case, threshold_dice  # noqa: E402
from drasclr_monailabel.data.sample_data import sample_path  # noqa: E402

LABEL_COLOURS = ListedColormap(["#1f77b4", "#d62728", "#2ca02c"])  # centrilobular, panlobular, paraseptal
WINDOW = (-1100, -400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/synth_examples.png"))
    parser.add_argument("--severity", type=float, default=12.0, help="true emphysema percentage per example")
    args = parser.parse_args()

    source = RealSource(sample_path("lidc0001_image"), segment_lungs, name="lidc0001_image").load()
    fig, axes = plt.subplots(3, 4, figsize=(16, 12), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for row, (value, name) in enumerate(SUBTYPE_NAMES.items()):
        settings = SynthSettings(severity_percent=(args.severity, args.severity), subtype_weights={name: 1.0},
                                 mixed_probability=0.0, noise_hu=(25.0, 25.0), kernels=("sharp",),
                                 lung_hu=(-860.0, -860.0), hu_offset=(0.0, 0.0))
        case = synthesize_case(source, settings, seed=row)
        _draw_case(axes[row], case, value, name)
    fig.suptitle("Synthetic emphysema in LIDC-IDRI-0001: one subtype per row, "
                 f"{args.severity:g} % of the lung, normal lung -860 HU, sharp kernel, 25 HU noise", fontsize=13)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    print(f"wrote {args.out}")


def _draw_case(axes, case, value: int, name: str) -> None:
    hu, label, lungs = case.volume.hu, case.label, case.lungs
    z = int(np.argmax(np.count_nonzero(label, axis=(1, 2))))
    rows, cols = np.nonzero(lungs.any(axis=0))
    crop = (slice(max(rows.min() - 10, 0), rows.max() + 10), slice(max(cols.min() - 10, 0), cols.max() + 10))
    image, truth = hu[z][crop], label[z][crop]
    threshold = (hu[z][crop] < -950) & (lungs[z][crop] > 0)
    dice = threshold_dice(hu, lungs, label)

    axes[0].imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    axes[0].set_title(f"{name}: synthetic CT (slice {z})")
    axes[1].imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    axes[1].imshow(np.ma.masked_equal(truth, 0), cmap=LABEL_COLOURS, vmin=1, vmax=3, alpha=0.55, interpolation="nearest")
    axes[1].set_title(f"true label ({case.severity_percent:.1f} % of lung)")
    axes[2].imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    axes[2].imshow(np.ma.masked_equal(threshold, False), cmap=ListedColormap(["#ffbf00"]), alpha=0.6, interpolation="nearest")
    axes[2].contour(truth > 0, levels=[0.5], colors="#00e5ff", linewidths=0.7)
    axes[2].set_title(f"HU < -950 (yellow) vs label outline; scan Dice {dice:.2f}")
    x = int(np.argmax(np.count_nonzero(label, axis=(0, 1))))
    coronal = hu[::-1, :, x]
    aspect = case.volume.spacing[2] / case.volume.spacing[1]
    axes[3].imshow(coronal, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect)
    axes[3].imshow(np.ma.masked_equal(label[::-1, :, x], 0), cmap=LABEL_COLOURS, vmin=1, vmax=3, alpha=0.55,
                   aspect=aspect, interpolation="nearest")
    axes[3].set_title("sagittal view (superior up)")
    for axis in axes:
        axis.set_axis_off()


if __name__ == "__main__":
    main()
