"""A CT (and optionally its label map) prepared for the segmentation network.

Preparation is the anatomy pipeline's (:func:`~drasclr_monailabel.anatomy.pipeline.preprocess_volume`:
lung mask, affine registration to the atlas, the 1 mm LPS grid cropped to the lungs) plus the
atlas-coordinate channels: for every voxel of that grid, its position mapped into the atlas by the
inverse registration and normalised with the atlas's centre and half extent, exactly the
normalisation of the landmark locations the encoder was pretrained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.anatomy.grid import make_grid, resample_labels, resample_nearest
from drasclr_monailabel.anatomy.pipeline import PreprocessedScan, preprocess_volume
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.segmentation.labels import LabelSet


@dataclass(frozen=True)
class PreparedCase:
    """One scan on the 1 mm lung grid.

    Attributes:
        case_id: name used in logs and errors.
        scan: the anatomy pipeline's result (``image`` int16 HU and ``lungs`` uint8, (Z, Y, X)).
        coordinates: float32 (3, Z, Y, X) normalised atlas x, y, z of every voxel.
        labels: uint8 (Z, Y, X) class indices on the same grid, or None for unlabelled scans.
        lungs_native: uint8 lung labels on the input volume's own grid (for quantification).
    """

    case_id: str
    scan: PreprocessedScan
    coordinates: np.ndarray
    labels: np.ndarray | None
    lungs_native: np.ndarray

    @property
    def lungs(self) -> np.ndarray:
        return self.scan.lungs

    @property
    def grid(self) -> sitk.Image:
        """An empty image with the 1 mm grid's geometry (a resampling reference)."""
        size = self.scan.image.shape[::-1]
        return make_grid(self.scan.origin, size, self.scan.spacing, self.scan.direction)


def prepare_case(
    volume: CTVolume,
    label_map: np.ndarray | None = None,
    label_set: LabelSet | None = None,
    atlas: Atlas | None = None,
    case_id: str = "",
) -> PreparedCase:
    """Run the anatomy pipeline on ``volume`` and add coordinates (and labels, if given).

    Args:
        volume: the CT.
        label_map: stored label values (0-3) on the volume's own grid, or None.
        label_set: how stored values become classes (default: binary emphysema).
        atlas: the atlas (default: the shipped one; it must match the encoder's).
        case_id: name for logs; defaults to the volume's source.

    Raises:
        NoLungsError / InputError: from the anatomy pipeline; ValueError for a label map whose
            shape differs from the volume or that holds values outside 0-3.
    """
    atlas = atlas or load_default_atlas()
    scan = preprocess_volume(volume, atlas)
    grid = make_grid(scan.origin, scan.image.shape[::-1], scan.spacing, scan.direction)
    labels = None
    if label_map is not None:
        if label_map.shape != volume.hu.shape:
            raise ValueError(f"label map shape {label_map.shape} differs from the image {volume.hu.shape}")
        classes = (label_set or LabelSet()).to_classes(label_map)
        labels = _to_grid(classes, volume, grid)
        labels[scan.lungs == 0] = 0
    lungs_image = sitk.GetImageFromArray(scan.lungs)
    lungs_image.CopyInformation(grid)
    native = make_grid(volume.origin, volume.shape_xyz, volume.spacing, volume.direction)
    return PreparedCase(
        case_id=case_id or volume.source,
        scan=scan,
        coordinates=atlas_coordinates(scan, atlas),
        labels=labels,
        lungs_native=resample_labels(lungs_image, native, n_labels=2),
    )


def atlas_coordinates(scan: PreprocessedScan, atlas: Atlas) -> np.ndarray:
    """Normalised atlas coordinates of every voxel of the scan's grid: float32 (3, Z, Y, X).

    The registration maps atlas world points to subject world points affinely, so its inverse
    composed with the grid's index-to-world map is one affine map from voxel index to atlas
    coordinate, evaluated here by broadcasting (no per-voxel point transforms).
    """
    forward = scan.registration.transform
    matrix = np.asarray(forward.GetMatrix(), dtype=np.float64).reshape(3, 3)
    offset = np.asarray(forward.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    inverse = np.linalg.inv(matrix)
    index_to_world = np.asarray(scan.direction, dtype=np.float64).reshape(3, 3) * np.asarray(scan.spacing)[None, :]
    centre = np.asarray(atlas.landmarks.centre, dtype=np.float64)
    half = np.asarray(atlas.landmarks.half_extent, dtype=np.float64)
    # coordinate = (inverse @ (origin + index_to_world @ ijk - offset) - centre) / half
    linear = (inverse @ index_to_world) / half[:, None]
    constant = (inverse @ (np.asarray(scan.origin) - offset) - centre) / half
    nz, ny, nx = scan.image.shape
    axes = [np.arange(n, dtype=np.float32) for n in (nx, ny, nz)]
    coordinates = np.empty((3, nz, ny, nx), dtype=np.float32)
    for a in range(3):
        coordinates[a] = (constant[a]
                          + linear[a, 0] * axes[0][None, None, :]
                          + linear[a, 1] * axes[1][None, :, None]
                          + linear[a, 2] * axes[2][:, None, None])
    return coordinates


def network_input(case: PreparedCase, lung_channel: bool = False) -> np.ndarray:
    """float32 (4, Z, Y, X): the CT in network units (lung window) and the three coordinates;
    with ``lung_channel`` a fifth channel, the lung mask as 0/1 (what sliding-window inference
    carries along to skip windows without lung). Filled in place: one array of the whole grid,
    no concatenated copies (on a full chest CT 0.47 GB fewer bytes allocated while it is built)."""
    image = case.scan.image
    inputs = np.empty((5 if lung_channel else 4, *image.shape), dtype=np.float32)
    inputs[0] = LUNG_WINDOW(_as_tensor(image)).numpy()
    inputs[1:4] = case.coordinates
    if lung_channel:
        np.greater(case.lungs, 0, out=inputs[4])
    return inputs


def _to_grid(classes: np.ndarray, volume: CTVolume, grid: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(classes.astype(np.uint8))
    image.SetOrigin(volume.origin)
    image.SetSpacing(volume.spacing)
    image.SetDirection(volume.direction)
    return sitk.GetArrayFromImage(resample_nearest(image, grid))


def _as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))
