"""A CT (and optionally its label map) prepared for the segmentation network.

Preparation is the anatomy pipeline's (:func:`~drasclr_monailabel.anatomy.pipeline.preprocess_volume`:
lung mask, affine registration to the atlas, the 1 mm LPS grid cropped to the lungs) plus the
atlas-coordinate channels: for every voxel of that grid, its position mapped into the atlas by the
inverse registration and normalised with the atlas's centre and half extent, exactly the
normalisation of the landmark locations the encoder was pretrained with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
import torch

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.anatomy.grid import resample_nearest
from drasclr_monailabel.anatomy.pipeline import PreprocessedScan, preprocess_volume
from drasclr_monailabel.anatomy.scan_store import ScanStore
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.segmentation.coordinates import CoordinateMap
from drasclr_monailabel.segmentation.labels import LabelSet


@dataclass(frozen=True)
class PreparedCase:
    """One scan on the 1 mm lung grid.

    Attributes:
        case_id: name used in logs and errors.
        scan: the anatomy pipeline's result (``image`` int16 HU and ``lungs`` uint8, (Z, Y, X)).
        coordinate_map: voxel index -> normalised atlas x, y, z (evaluated per window; the whole
            grid's three channels are :attr:`coordinates`).
        labels: uint8 (Z, Y, X) class indices on the same grid, or None for unlabelled scans.
        lungs_native: uint8 lung labels on the input volume's own grid (for quantification).
    """

    case_id: str
    scan: PreprocessedScan
    coordinate_map: CoordinateMap
    labels: np.ndarray | None
    lungs_native: np.ndarray

    @property
    def lungs(self) -> np.ndarray:
        return self.scan.lungs

    @property
    def coordinates(self) -> np.ndarray:
        """float32 (3, Z, Y, X) normalised atlas x, y, z of every voxel (computed on each access)."""
        return self.coordinate_map.full()

    def cropped(self, box: tuple[slice, slice, slice]) -> PreparedCase:
        """The case cut to ``box`` (slices of the 1 mm grid, (z, y, x), step 1): image, lungs,
        labels, grid origin, landmark indices and coordinate map move together."""
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, self.scan.image.shape))
        start = np.array([s.start for s in box])
        scan = self.scan
        shift = np.asarray(scan.direction).reshape(3, 3) @ (np.asarray(scan.spacing) * start[::-1])
        image = scan.image[box]
        scan = replace(scan, image=image, lungs=scan.lungs[box], origin=tuple(float(v) for v in np.asarray(scan.origin) + shift),
                       landmarks=scan.landmarks - start.astype(scan.landmarks.dtype))
        return replace(self, scan=scan, coordinate_map=self.coordinate_map.cropped(tuple(start), image.shape),
                       labels=None if self.labels is None else self.labels[box])

    @property
    def grid(self) -> sitk.Image:
        """An empty image with the 1 mm grid's geometry (a resampling reference)."""
        return self.scan.grid_image()


def prepare_case(
    volume: CTVolume,
    label_map: np.ndarray | None = None,
    label_set: LabelSet | None = None,
    atlas: Atlas | None = None,
    case_id: str = "",
    scans: ScanStore | None = None,
) -> PreparedCase:
    """Run the anatomy pipeline on ``volume`` and add coordinates (and labels, if given).

    Args:
        volume: the CT.
        label_map: stored label values (0-3) on the volume's own grid, or None.
        label_set: how stored values become classes (default: binary emphysema).
        atlas: the atlas (default: the shipped one; it must match the encoder's).
        case_id: name for logs; defaults to the volume's source.
        scans: where the anatomy pipeline's result is looked up and kept (the app's store);
            None preprocesses every time.

    Raises:
        NoLungsError / InputError: from the anatomy pipeline; ValueError for a label map whose
            shape differs from the volume or that holds values outside 0-3.
    """
    atlas = atlas or load_default_atlas()
    if scans is not None:
        scan = scans.preprocess(volume, atlas)
        lungs_native = scans.lungs_on(volume, scan)
    else:
        scan = preprocess_volume(volume, atlas)
        lungs_native = scan.lungs_on(volume)
    grid = scan.grid_image()
    labels = None
    if label_map is not None:
        if label_map.shape != volume.hu.shape:
            raise ValueError(f"label map shape {label_map.shape} differs from the image {volume.hu.shape}")
        classes = (label_set or LabelSet()).to_classes(label_map)
        labels = _to_grid(classes, volume, grid)
        labels[scan.lungs == 0] = 0
    return PreparedCase(
        case_id=case_id or volume.source,
        scan=scan,
        coordinate_map=CoordinateMap.of_scan(scan, atlas),
        labels=labels,
        lungs_native=lungs_native,
    )


def network_window(case: PreparedCase, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 (4, len(z), len(y), len(x)): the network input at the outer product of index
    vectors: the CT in network units (lung window) and the three atlas coordinates.

    Indices outside the grid are clipped to its edge (replicate padding). A training patch or an
    inference window is built from the int16 image and the coordinate map alone, so no float copy
    of the whole grid is ever made for it.
    """
    inputs = np.empty((4, len(z), len(y), len(x)), dtype=np.float32)
    shape = case.scan.image.shape
    index = np.ix_(*(np.clip(np.asarray(i), 0, n - 1) for i, n in zip((z, y, x), shape)))
    inputs[0] = LUNG_WINDOW(torch.from_numpy(case.scan.image[index])).numpy()
    inputs[1:4] = case.coordinate_map.at(z, y, x)
    return inputs


def network_input(case: PreparedCase) -> np.ndarray:
    """float32 (4, Z, Y, X): :func:`network_window` over the whole grid."""
    return network_window(case, *(np.arange(n) for n in case.scan.image.shape))


def _to_grid(classes: np.ndarray, volume: CTVolume, grid: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(classes.astype(np.uint8))
    image.SetOrigin(volume.origin)
    image.SetSpacing(volume.spacing)
    image.SetDirection(volume.direction)
    return sitk.GetArrayFromImage(resample_nearest(image, grid))
