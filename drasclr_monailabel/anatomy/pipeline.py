"""One scan through the anatomy pipeline: lung mask, registration, 1 mm grid, landmarks.

The result is held in memory (:class:`PreprocessedScan`); :mod:`~drasclr_monailabel.anatomy.cache`
writes it in the cache format and other stages (segmentation inference, nnU-Net export) can use it
directly.

The 1 mm grid is axis-aligned in LPS and spans the lungs plus a margin of 28 mm (half a patch,
16 mm, plus the +-12 voxel translations of the DrasCLR augmentation), clipped to the scanned field
of view. Landmarks are the atlas landmark centres mapped through the registration; landmark i is
valid when its whole patch was scanned and holds subject lung (at least half the atlas's
lung-fraction threshold). A scan with less than 30 mm of lung from top to bottom is refused:
too little of the lungs to place landmarks by.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import Atlas
from drasclr_monailabel.anatomy.grid import IDENTITY, make_grid, resample_labels, resample_nearest
from drasclr_monailabel.anatomy.landmarks import PATCH_SIZE, patch_fractions
from drasclr_monailabel.anatomy.lung_mask import LABEL_SMOOTHING_MM, lung_labels_working_grid
from drasclr_monailabel.anatomy.registration import Registration, RegistrationSettings, lungs_cut, prepare_atlas, register_to_atlas
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume

PAD_HU = -1024
CACHE_SPACING_MM = 1.0
MARGIN_MM = PATCH_SIZE // 2 + 12
MIN_LUNG_EXTENT_MM = 30.0
# A scan whose lungs reach its first or last slice needs more: slabs with 40 mm of lung put their
# landmarks a median 11 mm from where the whole scan puts them, slabs with 60 mm 4-6 mm
# (benchmarks/partial_slabs.py, docs/anatomy.md).
MIN_PARTIAL_LUNG_EXTENT_MM = 50.0
INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


@dataclass(frozen=True)
class PipelineSettings:
    """How a scan is preprocessed.

    Attributes:
        interpolation: image resampling to 1 mm. "linear" (default) takes 1-3 s for a
            512 x 512 x 400 scan; "bspline" (cubic, the DrasCLR reference) 6-9 times longer
            (about 19 s on 2 cores; benchmarks/preprocess.py).
        warn_dice: registration lung Dice below which the scan is kept with a warning.
        refuse_dice: registration lung Dice below which the scan is refused.
        min_valid_fov_fraction: share of a valid landmark's patch that must have been scanned
            (default all of it: a patch padded with -1024 HU beyond the scan is not a sample).
        require_lung_end: refuse a scan whose lungs run through both its first and last slice
            (neither apex nor base scanned) instead of keeping it with a warning: nothing fixes its
            height in the atlas, and slabs of the middle of the lungs put landmarks up to 12 mm from
            the whole scan's (docs/anatomy.md). Off by default: cohorts cropped at random (``drasclr
            synth``) and mid-chest scans would otherwise lose whole scans.
        lung_model: optional TorchScript lung model used instead of the classical lung mask.
    """

    interpolation: Literal["linear", "bspline"] = "linear"
    warn_dice: float = 0.7
    refuse_dice: float = 0.5
    min_valid_fov_fraction: float = 1.0
    require_lung_end: bool = False
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    lung_model: str | None = None


@dataclass(frozen=True)
class PreprocessedScan:
    """A scan on its 1 mm cache grid with its landmarks.

    Attributes:
        image: int16 (Z, Y, X) HU, padded with -1024 outside the scanned field of view.
        lungs: uint8 (Z, Y, X): 0 outside, 1 right lung, 2 left lung.
        origin, spacing, direction: the grid (ITK order x, y, z; LPS mm; identity direction).
        registration: the atlas -> subject affine and its Dice.
        landmarks: int32 (L, 3) patch centres (z, y, x) into ``image``; row i = atlas landmark i.
        valid: bool (L,) landmarks inside the scanned field of view whose patch holds lung.
        timings: seconds per stage; warnings: sentences for the QA report.
    """

    image: np.ndarray
    lungs: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    registration: Registration
    landmarks: np.ndarray
    valid: np.ndarray
    timings: dict[str, float]
    warnings: list[str]

    def lung_volumes_ml(self) -> dict[str, float]:
        """Right, left and total lung volume in mL on the 1 mm grid (within the scanned range)."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        right = float(np.count_nonzero(self.lungs == 1)) * voxel_ml
        left = float(np.count_nonzero(self.lungs == 2)) * voxel_ml
        return {"right": round(right, 1), "left": round(left, 1), "total": round(right + left, 1)}

    def grid_image(self) -> sitk.Image:
        """An empty image with the 1 mm grid's geometry (a resampling reference)."""
        return make_grid(self.origin, self.image.shape[::-1], self.spacing, self.direction)

    def lungs_on(self, volume: CTVolume) -> np.ndarray:
        """uint8 (Z, Y, X) lung labels on ``volume``'s own grid (the scan it came from): the 1 mm
        labels resampled with smooth boundaries (quantification runs at native resolution)."""
        lungs = sitk.GetImageFromArray(self.lungs)
        lungs.CopyInformation(self.grid_image())
        native = make_grid(volume.origin, volume.shape_xyz, volume.spacing, volume.direction)
        return resample_labels(lungs, native, n_labels=2)

    def grid(self) -> dict[str, Any]:
        """The grid of the arrays as recorded in ``_qa.json``."""
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction),
                "size": list(self.image.shape[::-1])}


def preprocess_volume(volume: CTVolume, atlas: Atlas, settings: PipelineSettings = PipelineSettings()) -> PreprocessedScan:
    """Lung mask, registration to ``atlas``, 1 mm grid and landmarks of one CT.

    Raises:
        NoLungsError: no lungs in the scan.
        InputError: less than 30 mm of lung from top to bottom (50 mm when the lungs reach the first
            or last slice), lungs that reach both the first and the last slice when
            ``settings.require_lung_end`` (a slab of the middle of the lungs: nothing fixes its
            height in the atlas), or a registration to the atlas too poor to place landmarks (Dice
            below ``settings.refuse_dice``).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    ct = volume.canonical()
    labels = lung_labels_working_grid(ct, settings.lung_model)
    timings["lung_mask"] = time.perf_counter() - clock
    source = volume.source or "<volume>"
    extent = lung_extent_mm(labels)
    if extent < MIN_LUNG_EXTENT_MM:
        raise InputError(source, f"the scan holds only {extent:.0f} mm of lung from top to bottom; at least "
                                 f"{MIN_LUNG_EXTENT_MM:.0f} mm are needed to place landmarks")
    cut = lungs_cut(labels)
    if extent < MIN_PARTIAL_LUNG_EXTENT_MM and any(cut):
        raise InputError(source, f"the scan covers only part of the lungs ({extent:.0f} mm of lung, cut by its first or last "
                                 f"slice); at least {MIN_PARTIAL_LUNG_EXTENT_MM:.0f} mm are needed to place landmarks in a partial scan")
    if settings.require_lung_end and all(cut):
        raise InputError(source, "the lungs run through both the first and the last slice, so neither apex nor base was scanned "
                                 "and the scan's height in the lungs cannot be found (landmarks up to 12 mm off were measured); "
                                 "a scan must hold the lung apex or the lung bases")

    clock = time.perf_counter()
    atlas_image = atlas.cached(f"registration-{settings.registration.spacing_mm}", lambda: prepare_atlas(atlas.lungs, settings.registration))
    registration = register_to_atlas(labels, atlas_image, settings.registration)
    timings["registration"] = time.perf_counter() - clock
    if registration.dice < settings.refuse_dice:
        raise InputError(source, f"the lungs do not match the atlas after affine registration (lung Dice {registration.dice:.2f}, "
                                 f"at least {settings.refuse_dice} needed); is this a chest CT of usual anatomy?")

    clock = time.perf_counter()
    grid = cache_grid(labels, MARGIN_MM)
    lungs = resample_labels(labels, grid, n_labels=2, smoothing_mm=LABEL_SMOOTHING_MM)
    fov = scanned_region(labels, grid)
    timings["lung_mask"] += time.perf_counter() - clock

    clock = time.perf_counter()
    centres_world = registration.to_subject(atlas.landmarks.world)
    landmarks = world_to_voxel(grid, centres_world)
    valid = landmark_validity(landmarks, lungs > 0, fov, atlas.landmarks.min_lung_fraction / 2.0, settings.min_valid_fov_fraction)
    timings["landmarks"] = time.perf_counter() - clock

    clock = time.perf_counter()
    image = resample_image(ct, grid, settings.interpolation)
    timings["resample"] = time.perf_counter() - clock

    warnings = _warnings(registration, valid, cut, settings)
    return PreprocessedScan(image=image, lungs=lungs, origin=tuple(grid.GetOrigin()), spacing=tuple(grid.GetSpacing()),  # type: ignore[arg-type]
                            direction=tuple(grid.GetDirection()), registration=registration, landmarks=landmarks, valid=valid,
                            timings=timings, warnings=warnings)


def lung_extent_mm(labels: sitk.Image) -> float:
    """Cranio-caudal extent (mm) of the lungs on an LPS label grid: slices holding lung times the slice step."""
    slices = np.flatnonzero(sitk.GetArrayViewFromImage(labels).any(axis=(1, 2)))
    return float((slices[-1] - slices[0] + 1) * labels.GetSpacing()[2]) if slices.size else 0.0


def cache_grid(labels: sitk.Image, margin_mm: float) -> sitk.Image:
    """Axis-aligned 1 mm grid over the lungs of ``labels`` plus ``margin_mm``, clipped to its field of view."""
    array = sitk.GetArrayViewFromImage(labels)
    present = [np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lung_corners = _box_corners(labels, [(p[0], p[-1]) for p in present[::-1]])
    size = labels.GetSize()
    fov_corners = _box_corners(labels, [(-0.5, n - 0.5) for n in size])
    low = np.maximum(lung_corners.min(axis=0) - margin_mm, fov_corners.min(axis=0))
    high = np.minimum(lung_corners.max(axis=0) + margin_mm, fov_corners.max(axis=0))
    low = np.floor(low / CACHE_SPACING_MM) * CACHE_SPACING_MM
    count = np.floor((high - low) / CACHE_SPACING_MM).astype(int) + 1
    return make_grid(low, count, (CACHE_SPACING_MM,) * 3, IDENTITY)


def scanned_region(labels: sitk.Image, grid: sitk.Image) -> np.ndarray | None:
    """bool (Z, Y, X) of the grid's voxels inside the scanned field of view, or None for all of them.

    The grid is clipped to the scan's bounding box, so for an axis-aligned scan every voxel was
    scanned; only an oblique scan needs the mask.
    """
    if np.allclose(labels.GetDirection(), IDENTITY):
        return None
    ones = sitk.Cast(labels * 0 + 1, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resample_nearest(ones, grid)) > 0


def world_to_voxel(grid: sitk.Image, points: np.ndarray) -> np.ndarray:
    """int32 (N, 3) nearest voxel indices (z, y, x) of world points (x, y, z) on an identity-direction grid."""
    index = np.rint((np.asarray(points) - np.array(grid.GetOrigin())) / np.array(grid.GetSpacing()))
    return index[:, ::-1].astype(np.int32)


def landmark_validity(centres: np.ndarray, lungs: np.ndarray, fov: np.ndarray | None, min_lung_fraction: float,
                      min_fov_fraction: float) -> np.ndarray:
    """bool (L,): centre inside the array and scanned, patch mostly scanned, patch holds enough lung.

    ``fov`` None means every voxel of the array was scanned.
    """
    shape = np.array(lungs.shape)
    inside = np.all((centres >= 0) & (centres < shape), axis=1)
    centre_scanned = inside.copy()
    if fov is None:
        low = np.clip(centres - PATCH_SIZE // 2, 0, shape)
        high = np.clip(centres - PATCH_SIZE // 2 + PATCH_SIZE, 0, shape)
        fov_fraction = np.prod(high - low, axis=1) / float(PATCH_SIZE**3)
    else:
        centre_scanned[inside] = fov[tuple(centres[inside].T)]
        fov_fraction = patch_fractions(fov, centres, PATCH_SIZE)
    lung_fraction = patch_fractions(lungs, centres, PATCH_SIZE)
    return centre_scanned & (fov_fraction >= min_fov_fraction) & (lung_fraction >= min_lung_fraction)


def resample_image(ct: CTVolume, grid: sitk.Image, interpolation: str) -> np.ndarray:
    """int16 HU on ``grid``; -1024 outside the scan. The scan is cropped to the grid first."""
    image = _crop_to(ct.to_sitk(), grid)
    resampled = sitk.Resample(image, grid, sitk.Transform(), INTERPOLATORS[interpolation], float(PAD_HU), sitk.sitkFloat32)
    return np.clip(np.rint(sitk.GetArrayViewFromImage(resampled)), -32768, 32767).astype(np.int16)


def _crop_to(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """The part of ``image`` that covers ``grid`` (plus 3 voxels of interpolation support)."""
    corners = _box_corners(grid, [(-0.5, n - 0.5) for n in grid.GetSize()])
    index = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in c]) for c in corners])
    low = np.clip(np.floor(index.min(axis=0)) - 3, 0, None).astype(int)
    high = np.minimum(np.ceil(index.max(axis=0)) + 4, image.GetSize()).astype(int)
    if np.any(high <= low):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in high - low], [int(v) for v in low])


def _box_corners(image: sitk.Image, ranges: list[tuple[float, float]]) -> np.ndarray:
    """World points (8, 3) of the corners of a continuous-index box given per axis (x, y, z)."""
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners])


def _warnings(registration: Registration, valid: np.ndarray, cut: tuple[bool, bool], settings: PipelineSettings) -> list[str]:
    warnings = []
    if registration.dice < settings.warn_dice:
        warnings.append(f"registration lung Dice {registration.dice:.2f} is below {settings.warn_dice}: check the QA image")
    ends = [name for name, reached in zip(("first", "last"), cut) if reached]
    if len(ends) == 2:
        warnings.append("the lungs reach the first and last slice: partial lung coverage with neither apex nor base, "
                        "so landmark heights are uncertain (up to 12 mm off measured; --require-lung-end refuses such scans)")
    elif ends:
        warnings.append(f"the lungs reach the {ends[0]} slice: partial lung coverage")
    if valid.mean() < 0.5:
        warnings.append(f"only {int(valid.sum())} of {len(valid)} landmarks are valid")
    return warnings
