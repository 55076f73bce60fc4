"""Check a submitted label map against the image it labels.

A label saved by 3D Slicer (or any client) must describe the same voxels as the image it labels,
otherwise training would learn from shifted or mirrored masks. The check reads only the image
header (fast) and the label, and refuses with one line that says what differs: size,
orientation, spacing or origin (beyond float32 rounding of file headers). A NIfTI label cut
short is refused too (ITK would fill the missing voxels with zeros without a word).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import _check_nifti_complete, _first_reason

SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3
ORIGIN_TOL_VOXELS = 0.05
"""Origins may differ by float32 rounding of NIfTI headers, far below a voxel."""


@dataclass(frozen=True)
class Grid:
    """Voxel grid of a 3D image in ITK conventions.

    Attributes:
        size: voxels (x, y, z).
        spacing: mm (x, y, z).
        origin: world position (LPS mm) of voxel [0, 0, 0].
        direction: 3x3 direction cosines, row-major.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Grid:
        return cls(tuple(int(s) for s in image.GetSize()[:3]), tuple(float(s) for s in image.GetSpacing()[:3]),  # type: ignore[arg-type]
                   tuple(float(o) for o in image.GetOrigin()[:3]), _direction3(image))  # type: ignore[arg-type]

    def describe(self) -> str:
        size = "x".join(map(str, self.size))
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.2f}" for o in self.origin)
        return f"size {size}, spacing {spacing} mm, origin ({origin})"


def read_grid(path: str | Path) -> Grid:
    """The grid of an image file, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "cannot be read as an image") from None
    return Grid.of(reader)


def conform_label(label_path: str | Path, image_grid: Grid, n_labels: int, label_names: list[str] | None = None) -> np.ndarray:
    """Read a label map, check that it lies on ``image_grid``, return it as uint8 (Z, Y, X).

    Args:
        label_path: the submitted file (NIfTI, NRRD, MetaImage; a 3D Slicer ``.seg.nrrd`` without
            overlapping segments is a plain 3D NRRD).
        image_grid: grid of the image the label belongs to.
        n_labels: largest allowed label value (values 0..n_labels).
        label_names: names of values 1..n_labels, for the error message.

    Raises:
        InputError: unreadable, not 3D, several components, non-integer or out-of-range values,
            or a grid that does not describe the image's voxels.
    """
    label = _read_label(Path(label_path))
    grid = Grid.of(label)
    array = sitk.GetArrayFromImage(label)
    array = _integer_values(Path(label_path), array, n_labels, label_names)
    return _onto_grid(Path(label_path), array, grid, image_grid)


def write_label(dest: str | Path, labels: np.ndarray, grid: Grid, compress: bool = True) -> None:
    """Write a uint8 (Z, Y, X) label map with ``grid``'s geometry (format from the suffix)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    sitk.WriteImage(image, str(dest), useCompression=compress)


def _read_label(path: Path) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "is not an image file the server can read (upload a NIfTI or NRRD label map)") from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"has {reader.GetNumberOfComponents()} values per voxel; a label map has one")
    dimension = reader.GetDimension()
    if dimension == 4 and size[3] == 1:
        dimension = 3
    if dimension == 4:
        raise InputError(path, f"is a 4D label of size {'x'.join(map(str, size))} (overlapping segments); "
                               "turn off 'Allow overlapping segments' in the MONAI Label settings or save a labelmap")
    if dimension != 3:
        raise InputError(path, f"is a {dimension}D image; a 3D label map on the image's grid is needed")
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(path)
        image = reader.Execute()
    except Exception as exc:  # ITK raises RuntimeError, nibabel (reading the NIfTI header) several types
        raise InputError(path, f"cannot be read: the file is truncated or corrupt ({_first_reason(exc)})") from None
    return image[:, :, :, 0] if image.GetDimension() == 4 else image


def _integer_values(path: Path, array: np.ndarray, n_labels: int, label_names: list[str] | None) -> np.ndarray:
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(path, "holds non-integer values; a label map holds label numbers")
    elif array.dtype.kind not in "iub":
        raise InputError(path, f"has voxel type {array.dtype}; a label map holds integer label numbers")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > n_labels:
        names = ", ".join(f"{i}={n}" for i, n in enumerate(label_names or [], start=1))
        allowed = f"0..{n_labels}" + (f" (0=background, {names})" if names else "")
        raise InputError(path, f"holds label values {low}..{high} but this model allows {allowed}")
    return array.astype(np.uint8, copy=False)


def _onto_grid(path: Path, array: np.ndarray, grid: Grid, image: Grid) -> np.ndarray:
    hint = "save the label as a labelmap with the image as reference geometry"
    if grid.size != image.size:
        raise InputError(path, f"has size {'x'.join(map(str, grid.size))} but the image has "
                               f"{'x'.join(map(str, image.size))}; {hint}")
    if not np.allclose(grid.direction, image.direction, atol=DIRECTION_ATOL):
        raise InputError(path, f"has a different orientation (direction cosines) than the image; {hint}")
    if not np.allclose(grid.spacing, image.spacing, rtol=SPACING_RTOL, atol=0):
        raise InputError(path, f"does not match the image's grid: label {grid.describe()}, image {image.describe()}")
    spacing = np.asarray(image.spacing)
    direction = np.asarray(image.direction).reshape(3, 3)
    offset_voxels = np.linalg.solve(direction * spacing, np.subtract(grid.origin, image.origin))
    if np.any(np.abs(offset_voxels) > ORIGIN_TOL_VOXELS):
        raise InputError(path, f"is shifted against the image: label {grid.describe()}, image {image.describe()}")
    return array


def _direction3(image: sitk.Image | sitk.ImageFileReader) -> tuple[float, ...]:
    direction = np.asarray(image.GetDirection(), dtype=np.float64)
    n = int(round(np.sqrt(direction.size)))
    return tuple(float(v) for v in direction.reshape(n, n)[:3, :3].ravel())
