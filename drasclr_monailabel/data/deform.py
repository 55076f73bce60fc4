"""Random anatomical variation of one scan: cranio-caudal crop, small rotation and scale, elastic warp.

One real CT becomes many different-looking subjects. The output keeps the source's voxel spacing
and direction (nothing is resampled to another resolution) and covers a random run of its slices.
No left-right flips: the left lung has a cardiac notch and two lobes, the right three.

The whole mapping (affine about the lung centre plus a smooth random displacement) is evaluated on
a coarse grid (about 8 mm) and handed to SimpleITK as a displacement field: resampling a
512 x 512 x 48 scan takes well under a second, against several seconds for a B-spline transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.utils.mask_centre import mask_centre

FIELD_STEP_MM = 8.0
# Farthest any point moves under the largest allowed transform (rotation and scale about the lung
# centre, elastic warp), with room to spare.
LUNG_REACH_MM = 40.0
AIR_HU = -1024


@dataclass(frozen=True)
class DeformRange:
    """How far the random variation goes.

    Attributes:
        rotation_deg: maximum rotation about the cranio-caudal axis.
        tilt_deg: maximum rotation about the left-right and antero-posterior axes.
        scale: maximum relative change of size per axis (0.07 = +-7 %).
        elastic_mm: RMS length of the smooth random displacement.
        elastic_length_mm: correlation length of that displacement (larger = smoother).
        min_slices_kept: smallest fraction of the slices kept by the cranio-caudal crop.
        min_lung_kept: smallest fraction of the lung voxels the crop must keep.
    """

    rotation_deg: float = 6.0
    tilt_deg: float = 2.0
    scale: float = 0.07
    elastic_mm: float = 4.0
    elastic_length_mm: float = 40.0
    min_slices_kept: float = 0.7
    min_lung_kept: float = 0.6


def random_deformation(volume: CTVolume, lungs: np.ndarray, rng: np.random.Generator,
                       limits: DeformRange = DeformRange()) -> tuple[CTVolume, np.ndarray]:
    """Crop, rotate, scale and warp a scan and its lung mask with one random transform.

    Args:
        volume: the source CT (any orientation; its geometry is kept).
        lungs: uint8 (Z, Y, X) lung labels on the same grid.
        rng: random source.
        limits: ranges of the random parameters.

    Returns:
        The deformed CT (int16 HU, air outside the source) and lung labels (nearest neighbour).
    """
    image = volume.to_sitk()
    start, count = _crop(lungs, rng, limits)
    reference = sitk.Image([image.GetSize()[0], image.GetSize()[1], count], sitk.sitkInt16)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, int(start))))
    transform = _displacement_transform(reference, _lung_centre(image, lungs), rng, limits)
    warped = sitk.Resample(image, reference, transform, sitk.sitkLinear, AIR_HU, sitk.sitkInt16)
    moved = CTVolume.from_sitk(warped, source=volume.source, description=volume.description, modality=volume.modality)
    return moved, _warp_lungs(lungs, image, reference, transform, start)


def _warp_lungs(lungs: np.ndarray, image: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                start: int) -> np.ndarray:
    """Nearest-neighbour warp of the lung labels, computed only in-plane near the source lungs.

    No output point farther than ``LUNG_REACH_MM`` from the source lungs' box can map into a lung
    (the transform moves no point that far), so the rest of the grid stays 0; this halves the
    resampling work on a full-FOV scan.
    """
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    inside = np.argwhere(lungs > 0)
    if inside.size == 0:
        return out
    spacing = np.array(image.GetSpacing())
    margin = np.ceil(LUNG_REACH_MM / spacing[:2]).astype(int)  # x, y
    low = np.maximum(inside.min(axis=0)[[2, 1]] - margin, 0)
    high = np.minimum(inside.max(axis=0)[[2, 1]] + margin + 1, reference.GetSize()[:2])
    region = sitk.Image([int(high[0] - low[0]), int(high[1] - low[1]), reference.GetSize()[2]], sitk.sitkUInt8)
    region.SetSpacing(reference.GetSpacing())
    region.SetDirection(reference.GetDirection())
    region.SetOrigin(image.TransformIndexToPhysicalPoint((int(low[0]), int(low[1]), int(start))))
    lung_image = sitk.GetImageFromArray(np.ascontiguousarray(lungs, dtype=np.uint8))
    lung_image.CopyInformation(image)
    warped = sitk.Resample(lung_image, region, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out[:, low[1]:high[1], low[0]:high[0]] = sitk.GetArrayFromImage(warped)
    return out


def _crop(lungs: np.ndarray, rng: np.random.Generator, limits: DeformRange) -> tuple[int, int]:
    """A random run of slices (start, count) that keeps enough of the lungs."""
    n = lungs.shape[0]
    per_slice = np.count_nonzero(lungs, axis=(1, 2)).astype(np.float64)
    total = max(per_slice.sum(), 1.0)
    count = int(rng.integers(int(np.ceil(limits.min_slices_kept * n)), n + 1))
    cumulative = np.concatenate([[0.0], np.cumsum(per_slice)])
    starts = np.arange(n - count + 1)
    kept = (cumulative[starts + count] - cumulative[starts]) / total
    good = starts[kept >= limits.min_lung_kept]
    if good.size == 0:
        good = starts[[int(np.argmax(kept))]]
    return int(rng.choice(good)), count


def _lung_centre(image: sitk.Image, lungs: np.ndarray) -> np.ndarray:
    found = mask_centre(lungs)
    centre_zyx = found if found is not None else (np.array(lungs.shape) - 1) / 2.0
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_zyx[::-1]]))


def _displacement_transform(reference: sitk.Image, centre: np.ndarray, rng: np.random.Generator,
                            limits: DeformRange) -> sitk.DisplacementFieldTransform:
    """Displacement field on a coarse grid covering ``reference``: affine about ``centre`` plus elastic."""
    size = np.array(reference.GetSize(), dtype=np.float64)
    spacing = np.array(reference.GetSpacing())
    extent = size * spacing
    field_size = np.maximum(np.ceil(extent / FIELD_STEP_MM).astype(int) + 3, 4)
    field_spacing = (extent + 2 * FIELD_STEP_MM) / (field_size - 1)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    field_origin = np.array(reference.GetOrigin()) - direction @ np.full(3, FIELD_STEP_MM)

    axes = [np.arange(n) * s for n, s in zip(field_size, field_spacing)]  # ITK order x, y, z
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) in index-aligned mm
    points = field_origin + grid @ direction.T

    matrix = _random_matrix(rng, limits, direction)
    affine = (points - centre) @ matrix.T + centre - points
    elastic = _elastic(grid.shape[:3], field_spacing, rng, limits)
    displacement = (affine + elastic).transpose(2, 1, 0, 3)  # -> (Z, Y, X, 3) for SimpleITK
    field = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field.SetOrigin(tuple(field_origin))
    field.SetSpacing(tuple(field_spacing))
    field.SetDirection(reference.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def _random_matrix(rng: np.random.Generator, limits: DeformRange, direction: np.ndarray) -> np.ndarray:
    """Rotation (mostly about world z, the cranio-caudal axis) times an anisotropic scale."""
    angles = np.radians([rng.uniform(-limits.tilt_deg, limits.tilt_deg), rng.uniform(-limits.tilt_deg, limits.tilt_deg),
                         rng.uniform(-limits.rotation_deg, limits.rotation_deg)])
    rotation = Rotation.from_euler("xyz", angles).as_matrix()
    scale = np.diag(1.0 + rng.uniform(-limits.scale, limits.scale, size=3))
    return rotation @ scale


def _elastic(shape: tuple[int, ...], field_spacing: np.ndarray, rng: np.random.Generator, limits: DeformRange) -> np.ndarray:
    """Smooth random displacement (mm, world axes), RMS length ``elastic_mm``, on the coarse grid."""
    if limits.elastic_mm <= 0:
        return np.zeros(shape + (3,))
    sigma = tuple(limits.elastic_length_mm / 2.0 / s for s in field_spacing)
    components = [ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="reflect") for _ in range(3)]
    field = np.stack(components, axis=-1)
    rms = float(np.sqrt((field**2).sum(axis=-1).mean()))
    return field * (limits.elastic_mm / max(rms, 1e-9))
