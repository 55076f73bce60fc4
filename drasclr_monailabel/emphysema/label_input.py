"""Read a label map (lung mask, emphysema mask) that must lie on a CT's voxel grid.

A label map saved by another tool often has the same voxels in another axis order (NIfTI in RAS
next to a DICOM CT in LPS), so it is first reoriented to the CT's orientation code (axis
permutations and flips only); after that its size, spacing, origin and direction must match the
CT's, because quantification pairs voxels one to one and never resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume

SPACING_RTOL = 1e-4
ORIGIN_TOLERANCE_VOXELS = 0.1
DIRECTION_ATOL = 1e-3


def read_label_map(path: str | Path, reference: CTVolume) -> np.ndarray:
    """Integer labels (Z, Y, X) on ``reference``'s grid.

    Raises:
        InputError: unreadable file, not a single-channel 3D image, non-integer values, or a
            grid (size, spacing, origin, direction) different from the CT's.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as an image ({_first_line(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise InputError(path, f"is not a single-channel 3D label map (dimension {image.GetDimension()}, "
                               f"{image.GetNumberOfComponentsPerPixel()} components)")
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) != reference.orientation:
        image = sitk.DICOMOrient(image, reference.orientation)
    _check_grid(path, image, reference)
    labels = sitk.GetArrayFromImage(image)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.rint(labels)):
            raise InputError(path, "has non-integer values; a label map holds whole numbers")
        labels = labels.astype(np.int32)
    return labels


def _check_grid(path: Path, image: sitk.Image, reference: CTVolume) -> None:
    size = image.GetSize()
    problems = []
    if tuple(size) != reference.shape_xyz:
        problems.append(f"size {_xyz(size, 'd')} vs {_xyz(reference.shape_xyz, 'd')}")
    if not np.allclose(image.GetSpacing(), reference.spacing, rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {_xyz(image.GetSpacing(), '.4g')} vs {_xyz(reference.spacing, '.4g')} mm")
    tolerance = ORIGIN_TOLERANCE_VOXELS * min(reference.spacing)
    if not np.allclose(image.GetOrigin(), reference.origin, rtol=0, atol=tolerance):
        problems.append(f"origin {_xyz(image.GetOrigin(), '.2f')} vs {_xyz(reference.origin, '.2f')} mm")
    if not np.allclose(image.GetDirection(), reference.direction, rtol=0, atol=DIRECTION_ATOL):
        problems.append("direction cosines differ")
    if problems:
        source = Path(reference.source).name if reference.source else "the CT"
        raise InputError(path, f"is not on the grid of {source}: {'; '.join(problems)} "
                               "(label maps must share the CT's voxel grid)")


def _xyz(values: tuple, spec: str) -> str:
    return "x".join(format(v, spec) for v in values)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
