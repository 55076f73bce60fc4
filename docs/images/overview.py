"""Make docs/images/overview.png, the README's picture, from the real sample CT.

Panels: (a) the lung mask and the anatomical landmarks mapped into the scan by the atlas
registration; (b) the atlas coordinates that tell the encoder where each patch is (x, y, z as
red, green, blue); (c) synthetic emphysema inserted into the same CT with its true label.

Run from the repository root:  python docs/images/overview.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from drasclr_monailabel.anatomy.lung_mask import segment_lungs
from drasclr_monailabel.data.sample_data import fetch_sample_data
from drasclr_monailabel.data.synth_cohort import RealSource, SynthSettings, synthesize_case
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.segmentation.case import prepare_case
from drasclr_monailabel.utils.atomic import write_with

OUT = Path(__file__).with_name("overview.png")
LANDMARK_BAND_MM = 12  # about half the landmark step (26 mm): one landmark layer


def main() -> None:
    path = fetch_sample_data(["lung2_image"])["lung2_image"]
    case = prepare_case(read_ct(path), case_id="lung2")
    scan = case.scan
    z = int(np.argmax((scan.lungs > 0).sum(axis=(1, 2))))
    synthetic = synthesize_case(RealSource(path, segment_lungs).scan(7), SynthSettings(severity_percent=(12.0, 12.0)), 7)
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    _landmarks(axes[0], scan, z)
    _coordinates(axes[1], case, z)
    _emphysema(axes[2], synthetic)
    for axis in axes:
        axis.axis("off")
    figure.suptitle("Real chest CT (pyradiomics lung2) through the drasclr-monailabel pipeline", fontsize=13)
    figure.tight_layout()
    write_with(OUT, lambda tmp: figure.savefig(tmp, dpi=90))
    print(f"wrote {OUT}")


def _window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1000.0) / 1200.0, 0.0, 1.0)


def _landmarks(axis, scan, z: int) -> None:
    axis.imshow(_window(scan.image[z]), cmap="gray")
    axis.contour(scan.lungs[z] == 1, levels=[0.5], colors="tab:red", linewidths=1)
    axis.contour(scan.lungs[z] == 2, levels=[0.5], colors="tab:blue", linewidths=1)
    near = scan.valid & (np.abs(scan.landmarks[:, 0] - z) <= LANDMARK_BAND_MM)
    axis.scatter(scan.landmarks[near, 2], scan.landmarks[near, 1], s=14, c="lime")
    axis.set_title(f"(a) lung mask and atlas landmarks\n({int(scan.valid.sum())} of {len(scan.valid)} landmarks in this scan)")


def _coordinates(axis, case, z: int) -> None:
    rgb = np.clip((case.coordinates[:, z].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    lung = case.lungs[z] > 0
    shown = np.where(lung[..., None], rgb, _window(case.scan.image[z])[..., None] * 0.6)
    axis.imshow(shown)
    axis.set_title("(b) atlas coordinate of every voxel (x, y, z as RGB):\nthe location that routes the encoder")


def _emphysema(axis, synthetic) -> None:
    label = synthetic.label
    z = int(np.argmax((label > 0).sum(axis=(1, 2))))
    axis.imshow(_window(synthetic.volume.hu[z].astype(np.float32)), cmap="gray")
    axis.contour(label[z] > 0, levels=[0.5], colors="gold", linewidths=0.8)
    axis.set_title(f"(c) synthetic emphysema ({synthetic.subtype.replace('+', ' + ')})\n"
                   f"inserted in the same CT, true label outlined")


if __name__ == "__main__":
    main()
