"""Atlas coordinates of a lung grid as one affine map, evaluated only where a window needs them.

The registration to the atlas is affine, so the normalised atlas position of a voxel is an affine
function of its index. A prepared case keeps that function (a 3 x 3 matrix and an offset) instead
of three float32 channels of its whole 1 mm grid (3 x 94 MB on a full chest CT), and each
training patch or inference window evaluates it for its own voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from drasclr_monailabel.anatomy.atlas import Atlas
    from drasclr_monailabel.anatomy.pipeline import PreprocessedScan


@dataclass(frozen=True)
class CoordinateMap:
    """Voxel index of a grid -> normalised atlas (x, y, z), the landmark normalisation of pretraining.

    Attributes:
        linear: float64 (3, 3); row = atlas axis x, y, z; column = index axis x, y, z (voxel units).
        constant: float64 (3,) the coordinates of voxel (0, 0, 0).
        shape: the grid's (Z, Y, X); indices are clipped to it.
    """

    linear: np.ndarray
    constant: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of_scan(cls, scan: PreprocessedScan, atlas: Atlas) -> CoordinateMap:
        """The map of ``scan``'s 1 mm grid: the inverse registration (subject world -> atlas world)
        composed with the grid's index-to-world map, then centred and scaled by the atlas's
        landmark centre and half extent."""
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
        return cls(linear=linear, constant=constant, shape=tuple(int(n) for n in scan.image.shape))

    def at(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """float32 (3, len(z), len(y), len(x)) at the outer product of index vectors.

        Indices outside the grid are clipped to its edge, the values replicate padding gives a
        window that reaches past the grid.
        """
        axes = [np.clip(np.asarray(i), 0, n - 1).astype(np.float32) for i, n in zip((x, y, z), self.shape[::-1])]
        coordinates = np.empty((3, len(z), len(y), len(x)), dtype=np.float32)
        for a in range(3):
            coordinates[a] = (self.constant[a]
                              + self.linear[a, 0] * axes[0][None, None, :]
                              + self.linear[a, 1] * axes[1][None, :, None]
                              + self.linear[a, 2] * axes[2][:, None, None])
        return coordinates

    def full(self) -> np.ndarray:
        """float32 (3, Z, Y, X): every voxel of the grid."""
        return self.at(*(np.arange(n) for n in self.shape))

    def cropped(self, start_zyx: tuple[int, int, int], shape: tuple[int, int, int]) -> CoordinateMap:
        """The map of the sub-grid of ``shape`` whose voxel (0, 0, 0) is ``start_zyx`` of this one."""
        start_xyz = np.asarray(start_zyx[::-1], dtype=np.float64)
        return CoordinateMap(linear=self.linear, constant=self.constant + self.linear @ start_xyz,
                             shape=tuple(int(n) for n in shape))
