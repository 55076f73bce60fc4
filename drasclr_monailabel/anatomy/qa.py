"""QA image of a preprocessed scan: lung outlines and landmark centres on three orthogonal slices.

Right lung outlined in red, left in blue (a band of the lung's two outermost voxels, drawn as an
overlay: cheaper than contour lines, and wide enough to survive the figure's downscaling); valid
landmark centres whose patch crosses the shown slice are green dots, invalid ones orange crosses.
Slices pass through the lungs' centre of mass. Views are shown in radiological convention
(patient right on the image left, anterior up, superior up), which is how the LPS array displays
without flips in the axial view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from drasclr_monailabel.anatomy.landmarks import PATCH_SIZE
from drasclr_monailabel.utils.atomic import write_with
from drasclr_monailabel.utils.mask_centre import mask_centre

WINDOW_HU = (-1000, 200)
OUTLINE_RGBA = {1: (1.0, 0.0, 0.0, 1.0), 2: (0.12, 0.56, 1.0, 1.0)}  # right red, left dodger blue


def outline_overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4) image of each lung's two outermost pixels in its colour, transparent elsewhere."""
    overlay = np.zeros((*labels.shape, 4))
    for label, colour in OUTLINE_RGBA.items():
        inside = labels == label
        overlay[inside & ~ndimage.binary_erosion(inside, iterations=2)] = colour
    return overlay


def write_qa_png(path: str | Path, image: np.ndarray, lungs: np.ndarray, landmarks: np.ndarray, valid: np.ndarray, title: str) -> None:
    """Render the QA figure of one scan (arrays on its 1 mm grid, landmarks as (z, y, x) voxels)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    found = mask_centre(lungs)
    centre = found.astype(int) if found is not None else np.array(lungs.shape) // 2
    figure = Figure(figsize=(13, 4.8), dpi=80)
    axes = figure.subplots(1, 3, gridspec_kw=dict(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.04))
    views = (("axial", 0), ("coronal", 1), ("sagittal", 2))
    for ax, (name, axis) in zip(axes, views):
        index = int(centre[axis])
        picture = np.take(image, index, axis=axis)
        outline = np.take(lungs, index, axis=axis)
        near = np.abs(landmarks[:, axis] - index) < PATCH_SIZE // 2
        rows, cols = [a for a in range(3) if a != axis]
        if axis != 0:  # show superior at the top
            picture, outline = picture[::-1], outline[::-1]
        row_of = (lambda r: picture.shape[0] - 1 - r) if axis != 0 else (lambda r: r)
        ax.imshow(picture, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], interpolation="nearest")
        ax.imshow(outline_overlay(outline), interpolation="nearest")
        for mask, style in ((near & valid, dict(c="lime", marker="o", s=10)), (near & ~valid, dict(c="orange", marker="x", s=14))):
            ax.scatter(landmarks[mask, cols], row_of(landmarks[mask, rows]), linewidths=1.0, **style)
        ax.set_title(f"{name} {index}", fontsize=9)
        ax.set_xlim(-0.5, picture.shape[1] - 0.5)
        ax.set_ylim(picture.shape[0] - 0.5, -0.5)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=10)
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
