"""The one in-memory CT type that every later stage takes.

Axis convention: ``hu`` is indexed ``[z, y, x]`` (SimpleITK / numpy order), while ``spacing``,
``origin`` and ``direction`` are in ITK order ``(x, y, z)`` and world coordinates are LPS mm,
exactly as SimpleITK reports them. Keeping ITK's geometry verbatim lets any stage round-trip to a
``SimpleITK.Image`` without loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

CANONICAL_ORIENTATION = "LPS"


@dataclass(frozen=True)
class CTVolume:
    """A 3D CT scan in Hounsfield units.

    Attributes:
        hu: int16 array, shape (Z, Y, X), Hounsfield units.
        spacing: voxel size in mm, ITK order (x, y, z).
        origin: world position (LPS, mm) of voxel [0, 0, 0].
        direction: 3x3 direction cosines, row-major, ITK convention.
        source: file or folder the scan was read from (used in error messages).
        description: DICOM SeriesDescription or the file name.
        modality: DICOM Modality where known, else "CT" (assumed after validation).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str = ""
    description: str = ""
    modality: str = "CT"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Size in voxels, ITK order (x, y, z)."""
        z, y, x = self.hu.shape
        return (x, y, z)

    @property
    def orientation(self) -> str:
        """Three-letter ITK/DICOM orientation code, e.g. "LPS" or "RAI"."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size along each image axis in mm, ITK order (x, y, z)."""
        return tuple(float(n * s) for n, s in zip(self.shape_xyz, self.spacing))  # type: ignore[return-value]

    def to_sitk(self) -> sitk.Image:
        """A ``SimpleITK.Image`` sharing this volume's geometry (int16 HU)."""
        image = sitk.GetImageFromArray(self.hu)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, **fields: object) -> "CTVolume":
        """Wrap a 3D ``SimpleITK.Image`` already in HU (it is cast to int16 with clipping).

        Rounding and clipping work in place on the array copy SimpleITK returns, and int16 voxels
        pass through: a float scan of 512x512x133 costs one float copy, not three (280 MB less)."""
        array = sitk.GetArrayFromImage(image)
        if array.dtype == np.int16:
            hu = array
        elif np.issubdtype(array.dtype, np.integer):
            hu = np.clip(array, -32768, 32767).astype(np.int16)
        else:
            np.rint(array, out=array)
            hu = np.clip(array, -32768, 32767, out=array).astype(np.int16)
        return cls(
            hu=hu,
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(d) for d in image.GetDirection()),
            **fields,  # type: ignore[arg-type]
        )

    def canonical(self) -> "CTVolume":
        """The same scan reoriented to LPS (array x -> patient left, y -> posterior, z -> superior).

        Only axes are permuted and flipped (no resampling), so HU values are unchanged.
        """
        if self.orientation == CANONICAL_ORIENTATION:
            return self
        oriented = sitk.DICOMOrient(self.to_sitk(), CANONICAL_ORIENTATION)
        moved = CTVolume.from_sitk(oriented)
        return replace(self, hu=moved.hu, spacing=moved.spacing, origin=moved.origin, direction=moved.direction)

    def with_hu(self, hu: np.ndarray) -> "CTVolume":
        """A copy with new voxel values and the same geometry (shape must match)."""
        if hu.shape != self.hu.shape:
            raise ValueError(f"shape {hu.shape} does not match {self.hu.shape}")
        return replace(self, hu=hu.astype(np.int16, copy=False))
