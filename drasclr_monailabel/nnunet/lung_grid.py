"""A CT on the grid that nnU-Net sees: the segmentation model's prepared case, optionally coarser.

:func:`~drasclr_monailabel.segmentation.case.prepare_case` gives the 1 mm lung-cropped grid, the
atlas-coordinate channels and the lung masks (the same preparation as the native emphysema
model). ``spacing_mm`` > 1 block-averages that grid by a whole factor (HU and coordinates are
averaged, masks and labels resampled smoothly): only for quick checks on a CPU, since the
DrasCLR encoder was pretrained at 1 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.anatomy.grid import array_to_image, resample_labels
from drasclr_monailabel.anatomy.scan_store import ScanStore
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.segmentation.case import prepare_case
from drasclr_monailabel.segmentation.inference import labels_on_grid
from drasclr_monailabel.segmentation.labels import LabelSet


@dataclass(frozen=True)
class LungGridCase:
    """One scan on the export grid.

    Attributes:
        grid: empty image carrying the grid's geometry (LPS, axis-aligned).
        hu: int16 (Z, Y, X) Hounsfield units.
        coordinates: float32 (3, Z, Y, X) normalised atlas x, y, z of every voxel.
        lungs: uint8 (Z, Y, X) 0 / 1 right / 2 left on the grid.
        labels: uint8 (Z, Y, X) class indices on the grid (background outside the lungs), or None.
        lungs_native: uint8 lung labels on the input volume's own grid.
        atlas_id: the atlas the coordinates refer to.
    """

    grid: sitk.Image
    hu: np.ndarray
    coordinates: np.ndarray
    lungs: np.ndarray
    labels: np.ndarray | None
    lungs_native: np.ndarray
    atlas_id: str

    def native_labels(self, probabilities: np.ndarray, volume: CTVolume) -> np.ndarray:
        """Class probabilities (C, Z, Y, X) on this grid -> uint8 class labels on ``volume``'s grid
        (linear resampling, then the arg-max)."""
        return labels_on_grid(probabilities, self.grid, volume)


def lung_grid_case(volume: CTVolume, spacing_mm: int = 1, atlas: Atlas | None = None,
                   label_map: np.ndarray | None = None, label_set: LabelSet | None = None,
                   scans: ScanStore | None = None) -> LungGridCase:
    """Prepare ``volume`` (and its stored label values, if given) on the export grid.

    Args:
        volume: the CT.
        spacing_mm: grid spacing in whole mm (1: the prepared grid itself).
        atlas: the atlas for registration and coordinates (default: the shipped one).
        label_map: stored label values (0-3) on the volume's grid, or None.
        label_set: binary or subtypes (default binary).
        scans: the app's store of preprocessed scans (None: preprocess every time).

    Raises:
        NoLungsError / InputError: from the anatomy pipeline; ValueError for a bad label map.
    """
    atlas = atlas or load_default_atlas()
    case = prepare_case(volume, label_map=label_map, label_set=label_set, atlas=atlas, scans=scans)
    prepared = LungGridCase(grid=case.grid, hu=case.scan.image, coordinates=case.coordinates, lungs=case.lungs,
                            labels=case.labels, lungs_native=case.lungs_native, atlas_id=atlas.atlas_id)
    if spacing_mm == 1:
        return prepared
    return _coarser(prepared, spacing_mm, (label_set or LabelSet()).num_classes - 1)


def _coarser(case: LungGridCase, factor: int, n_classes: int) -> LungGridCase:
    """Block-average the 1 mm grid by ``factor`` per axis (ITK BinShrink keeps world alignment)."""
    def shrink(array: np.ndarray) -> sitk.Image:
        return sitk.BinShrink(array_to_image(array.astype(np.float32), case.grid), [factor] * 3)

    hu_image = shrink(case.hu)
    grid = sitk.Image(hu_image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(hu_image)
    hu = np.rint(sitk.GetArrayFromImage(hu_image)).astype(np.int16)
    coordinates = np.stack([sitk.GetArrayFromImage(shrink(channel)) for channel in case.coordinates]).astype(np.float32)
    lungs = resample_labels(array_to_image(case.lungs, case.grid), grid, n_labels=2)
    labels = None
    if case.labels is not None:
        labels = resample_labels(array_to_image(case.labels, case.grid), grid, n_labels=n_classes)
        labels[lungs == 0] = 0
    return LungGridCase(grid=grid, hu=hu, coordinates=coordinates, lungs=lungs, labels=labels,
                        lungs_native=case.lungs_native, atlas_id=case.atlas_id)
