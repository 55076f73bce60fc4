"""The landmark grid: fixed anatomical places where DrasCLR takes its 32^3 patches.

Over the atlas lung mask (1 mm), a regular grid of 32^3 patches with step 26 (6 voxel overlap)
is laid over the lungs' bounding box; a patch is kept when more than 10% of it is lung, and the
threshold is raised in 1% steps until no more than about 600 remain (the DrasCLR reference atlas
keeps 581). Each landmark carries its atlas coordinate normalised to [-1, 1] per axis (the
location that conditions the encoder) and its k = 2 nearest other landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

PATCH_SIZE = 32
STEP = 26
MIN_LUNG_FRACTION = 0.1
TARGET_LANDMARKS = 600
N_NEIGHBOURS = 2
THRESHOLD_STEP = 0.01


@dataclass(frozen=True)
class LandmarkGrid:
    """Landmarks of an atlas.

    Attributes:
        voxel: int (L, 3) patch centres as atlas voxel indices (z, y, x); the patch is
            ``[c - 16, c + 16)`` along each axis (centre at index 16 of the patch).
        world: float (L, 3) patch centres in atlas world mm (x, y, z, LPS).
        lung_fraction: float (L,) fraction of each patch that is atlas lung.
        neighbours: int (L, k) indices of the k nearest other landmarks (atlas distance).
        centre, half_extent: (3,) x, y, z mm; ``(world - centre) / half_extent`` is in [-1, 1].
        min_lung_fraction: the threshold that was applied (at least 0.1).
    """

    voxel: np.ndarray
    world: np.ndarray
    lung_fraction: np.ndarray
    neighbours: np.ndarray
    centre: np.ndarray
    half_extent: np.ndarray
    min_lung_fraction: float

    @property
    def normalised(self) -> np.ndarray:
        """float (L, 3) normalised atlas coordinates (x, y, z) in [-1, 1]."""
        return (self.world - self.centre) / self.half_extent

    def __len__(self) -> int:
        return int(self.voxel.shape[0])


def landmark_grid(lungs: sitk.Image, patch_size: int = PATCH_SIZE, step: int = STEP,
                  min_lung_fraction: float = MIN_LUNG_FRACTION, target: int = TARGET_LANDMARKS,
                  n_neighbours: int = N_NEIGHBOURS) -> LandmarkGrid:
    """Lay the patch grid over an atlas lung mask and keep the patches that hold enough lung.

    Args:
        lungs: atlas labels (0 outside, >0 lung), expected at 1 mm so that patches are 32 mm.
        target: raise the threshold until at most this many patches remain.

    Raises:
        ValueError: the mask is empty or too small to keep ``n_neighbours + 1`` patches.
    """
    mask = sitk.GetArrayFromImage(lungs) > 0
    if not mask.any():
        raise ValueError("the atlas lung mask is empty")
    starts = np.stack(np.meshgrid(*[_axis_starts(mask, axis, patch_size, step) for axis in range(3)], indexing="ij"), axis=-1).reshape(-1, 3)
    centres = starts + patch_size // 2
    fractions = patch_fractions(mask, centres, patch_size)
    threshold = min_lung_fraction
    while np.count_nonzero(fractions > threshold) > target:
        threshold = round(threshold + THRESHOLD_STEP, 6)
    keep = fractions > threshold
    if np.count_nonzero(keep) <= n_neighbours:
        raise ValueError(f"only {np.count_nonzero(keep)} patches hold more than {threshold:.0%} lung")
    voxel = centres[keep].astype(np.int64)
    world = np.array([lungs.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[::-1]]) for c in voxel])
    low, high = world.min(axis=0), world.max(axis=0)
    centre = (low + high) / 2.0
    half_extent = np.maximum((high - low) / 2.0, 1e-6)
    return LandmarkGrid(voxel=voxel, world=world, lung_fraction=fractions[keep], neighbours=nearest_neighbours(world, n_neighbours),
                        centre=centre, half_extent=half_extent, min_lung_fraction=float(threshold))


def patch_fractions(mask: np.ndarray, centres: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Fraction of each cubic patch that lies in ``mask`` (voxels beyond the array count as outside).

    A few hundred patches (a scan's landmarks) are counted one by one; thousands (the grid laid
    over an atlas) through a summed-volume table, whose cumulative sums cost more than counting
    a few patches but less than counting many.

    Args:
        mask: bool (Z, Y, X).
        centres: int (P, 3) patch centres (z, y, x); patch = ``[c - size//2, c - size//2 + size)``.
    """
    low = np.asarray(centres) - patch_size // 2
    high = low + patch_size
    if len(low) * patch_size**3 < 2 * mask.size:
        lo = np.clip(low, 0, mask.shape)
        hi = np.clip(high, 0, mask.shape)
        counts = [np.count_nonzero(mask[a[0]:b[0], a[1]:b[1], a[2]:b[2]]) for a, b in zip(lo, hi)]
        return np.asarray(counts, dtype=np.float64) / float(patch_size**3)
    # Only the region the patches cover matters: crop to it so the table stays small.
    origin = np.clip(low.min(axis=0), 0, mask.shape)
    end = np.clip(high.max(axis=0), 0, mask.shape)
    region = mask[origin[0]:end[0], origin[1]:end[1], origin[2]:end[2]]
    table = np.zeros(tuple(n + 1 for n in region.shape), dtype=np.int32)
    table[1:, 1:, 1:] = region.astype(np.int32).cumsum(0).cumsum(1).cumsum(2)
    low = np.clip(low - origin, 0, region.shape)
    high = np.clip(high - origin, 0, region.shape)
    total = np.zeros(len(low), dtype=np.int64)
    for corner in range(8):
        pick = [(corner >> axis) & 1 for axis in range(3)]
        index = tuple(np.where(pick[axis], high[:, axis], low[:, axis]) for axis in range(3))
        sign = -1 if (3 - sum(pick)) % 2 else 1
        total += sign * table[index].astype(np.int64)
    return total / float(patch_size**3)


def nearest_neighbours(points: np.ndarray, k: int = N_NEIGHBOURS) -> np.ndarray:
    """Indices (P, k) of the k nearest other points (Euclidean; ties go to the lower index)."""
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def _axis_starts(mask: np.ndarray, axis: int, patch_size: int, step: int) -> np.ndarray:
    """Patch start indices along one axis: a grid centred on the lungs' extent that covers it."""
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    first, extent = int(present[0]), int(present[-1] - present[0] + 1)
    count = max(1, int(np.ceil((extent - patch_size) / step)) + 1)
    covered = (count - 1) * step + patch_size
    return first - (covered - extent) // 2 + step * np.arange(count)
