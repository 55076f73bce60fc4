"""Affine registration of a subject's lung labels to the atlas lung labels (SimpleITK).

The subject is the *fixed* image and the atlas the *moving* one: ITK samples the metric at fixed
points, so every point of a partial-coverage scan is compared with the (complete) atlas and
nothing outside the scanned field of view takes part. The transform ITK returns maps subject
world points to atlas world points; its inverse (atlas world -> subject world) is what the cache
stores and what maps landmarks into the subject.

Both label images (0 / 1 right / 2 left, so sides cannot swap) are put on a 2 mm isotropic grid;
the optimisation runs over 3 levels (shrink 4/2/1 as in the DrasCLR reference; Gaussian
smoothing 4/2/1 voxels, smoother than the reference's 2/1/0: on real CT held out from the atlas
it gave a lung Dice higher by 0.01 on average, docs/anatomy.md), then, for a scan that covers the
whole lungs, a refinement that maximises the lungs' overlap directly
(``anatomy.overlap_refinement``); a scan that covers part of the lungs gets a similarity, then its
in-plane part and sagittal tilt refined (``RegistrationSettings.partial_transform``). Initialisation: the lungs'
centre of mass in x and y, and in z a scale and shift that match the subject's lung area per slice to the atlas's (for a scan that covers the
whole lungs this is the centre-of-mass initialisation; for a partial scan it finds which part
of the lungs was scanned).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.grid import IDENTITY, array_to_image, make_grid, resample_labels, world_bounds
from drasclr_monailabel.anatomy.overlap_refinement import OverlapSettings, refine_overlap
from drasclr_monailabel.utils.mask_centre import mask_centre

N_LABELS = 2
# Scale range searched at initialisation (subject size / atlas size) and its number of steps.
INIT_SCALES = np.linspace(0.75, 1.3, 23)
INIT_SHIFT_STEP_MM = 2.0
# The metric is evaluated on the subject's lungs plus this margin of background; the atlas keeps
# a wider margin so that those points still fall inside it after the transform.
METRIC_MARGIN_MM = 20.0
ATLAS_MARGIN_MM = 40.0
# Step weights of an affine's 12 parameters (matrix row by row, then translation) for the second
# stage of a partial scan's fit. In-plane: x and y of the result as an affine function of x and
# y; everything that involves z stays where the similarity put it. Sagittal tilt in addition: the
# result's z also follows the subject's y (entry 7), and shifts (entry 11), so that the lungs'
# front-to-back slope of the cranio-caudal axis (how much lower the posterior lung reaches, which
# an apex slab shows in its dome) is fitted, not taken from the similarity.
IN_PLANE_WEIGHTS = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
IN_PLANE_TILT_WEIGHTS = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
SECOND_STAGE_WEIGHTS = {"similarity_in_plane": IN_PLANE_WEIGHTS, "similarity_in_plane_tilt": IN_PLANE_TILT_WEIGHTS}


@dataclass(frozen=True)
class RegistrationSettings:
    """Optimiser settings; the defaults are the ones measured in ``benchmarks/preprocess.py``.

    ``smoothing_sigmas`` are in voxels of each level (ANTs' ``4x2x1vox`` convention);
    ``iterations`` is the cap per level; ``sampling_fraction``, if given, samples that share of
    the voxels at every level instead of ``samples_per_level`` points; ``learning_rate`` and ``min_step`` are the largest and
    smallest optimiser steps (in mm of the largest point shift, thanks to the physical-shift
    parameter scales). Mattes mutual information (as in DrasCLR) gave a slightly higher lung Dice
    on real CT than mean squares and converged in fewer iterations. ``partial_transform`` is the
    transform fitted when the lungs reach the first or last slice: a slab of the lungs does not
    pin down the 12 parameters of an affine (shear and the cranio-caudal scale drift to fit the
    visible part), so it gets a similarity (rotation, translation, one scale) whose rotation
    steps are scaled by ``partial_rotation_weight``; a second stage then frees what a slab does
    show. ``similarity_in_plane``: the in-plane part that every axial slice shows (x and y as an
    affine function of x and y: two scales, shear, rotation about z, x and y translation);
    ``similarity_in_plane_tilt`` (the default) also the sagittal tilt (z as a function of y, and
    the z shift): how far the lungs reach down at the back against the front, which an apex
    slab's dome and a base slab's diaphragm show. The z scale and z-versus-x stay from the
    similarity. On 12 slabs cut from two full chest CTs the tilt put 99.8 % of the landmarks
    within 10 mm of the full scan's (mean over slabs; largest distance 10.8 mm), against 97.4 %
    in-plane only (13.6 mm), 94.1 % for the similarity at rotation weight 0.3 (an earlier
    default) and up to 24 mm off with an affine (docs/anatomy.md).
    ``overlap`` refines the affine of a scan that covers the whole lungs by maximising the lungs'
    soft Dice (``anatomy.overlap_refinement``; None: mutual information only); the fit with the
    higher lung Dice is kept. Partial scans keep the mutual-information fit: refining a
    slab's overlap (as a similarity) put its landmarks farther from the full scan's (docs/anatomy.md).
    """

    metric: Literal["mattes", "meansquares"] = "mattes"
    spacing_mm: float = 2.0
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (4.0, 2.0, 1.0)
    iterations: int = 100
    samples_per_level: int = 10_000
    sampling_fraction: float | None = None
    learning_rate: float = 2.0
    min_step: float = 0.05
    histogram_bins: int = 32
    seed: int = 1
    partial_transform: Literal["affine", "similarity", "similarity_in_plane", "similarity_in_plane_tilt"] = "similarity_in_plane_tilt"
    partial_rotation_weight: float = 1.0
    overlap: OverlapSettings | None = OverlapSettings()


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_to_atlas`.

    Attributes:
        transform: affine mapping atlas world points (LPS mm) to subject world points.
        dice: Dice of the warped atlas lungs and the subject lungs within the scanned field of view.
        dice_right, dice_left: the same per lung (labels must agree).
        metric: final metric value; iterations: optimiser iterations over all levels.
        seconds: wall time of the registration.
    """

    transform: sitk.AffineTransform
    dice: float
    dice_right: float
    dice_left: float
    metric: float
    iterations: int
    seconds: float

    def to_subject(self, atlas_points: np.ndarray) -> np.ndarray:
        """Map (N, 3) atlas world points (x, y, z mm) to subject world points."""
        return np.array([self.transform.TransformPoint([float(v) for v in p]) for p in atlas_points]).reshape(-1, 3)


def register_to_atlas(subject: sitk.Image, atlas: sitk.Image, settings: RegistrationSettings = RegistrationSettings()) -> Registration:
    """Affinely register subject lung labels to atlas lung labels (a partial scan: ``settings.partial_transform``).

    Args:
        subject: uint8 labels (0 / 1 right / 2 left) on any grid that spans the scanned field of
            view (e.g. the lung mask's working grid).
        atlas: the atlas labels (same label values), as given or already passed through
            :func:`prepare_atlas` (which saves its cost when many scans are registered).

    Returns:
        The atlas -> subject transform and its quality.
    """
    started = time.perf_counter()
    fixed_labels = on_isotropic_grid(subject, settings.spacing_mm)
    moving_labels = prepare_atlas(atlas, settings)
    fixed = _around_lungs(fixed_labels, METRIC_MARGIN_MM)
    initial = initial_transform(fixed_labels, moving_labels)
    whole_lungs = not covers_part_of_lungs(fixed_labels)
    partial = not whole_lungs and settings.partial_transform != "affine"
    iterations = [0]
    if partial:  # versor (3), translation (3), scale (1)
        fit = _fit(settings, fixed, moving_labels, _restricted(initial),
                   [settings.partial_rotation_weight] * 3 + [1.0] * 4, iterations)
        if settings.partial_transform in SECOND_STAGE_WEIGHTS:
            fit = _fit(settings, fixed, moving_labels, _as_affine(fit.found), SECOND_STAGE_WEIGHTS[settings.partial_transform], iterations)
    else:
        fit = _fit(settings, fixed, moving_labels, initial, None, iterations)
    subject_to_atlas = _as_affine(fit.found)
    dice = label_dice(fixed_labels, moving_labels, subject_to_atlas)
    if settings.overlap is not None and whole_lungs:
        refined = refine_overlap(fixed, moving_labels, subject_to_atlas, settings.overlap)
        refined_dice = label_dice(fixed_labels, moving_labels, refined)
        if refined_dice[0] > dice[0]:
            subject_to_atlas, dice = refined, refined_dice
    return Registration(
        transform=sitk.AffineTransform(subject_to_atlas.GetInverse()),
        dice=dice[0], dice_right=dice[1], dice_left=dice[2],
        metric=fit.metric, iterations=iterations[0], seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class _Fit:
    """What one ITK optimisation returned: the transform (subject -> atlas) and its final metric."""

    found: sitk.Transform
    metric: float


def _fit(settings: RegistrationSettings, fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
         weights: list[float] | None, iterations: list[int]) -> _Fit:
    """One multi-resolution fit of ``initial``'s parameters (``weights``: per-parameter step weights, 0 freezes one),
    counting optimiser iterations into ``iterations[0]``."""
    method = _method(settings, fixed)
    if weights is not None:
        method.SetOptimizerWeights(weights)
    method.SetInitialTransform(initial, inPlace=False)
    method.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    with _single_threaded():
        found = method.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    return _Fit(found=found, metric=float(method.GetMetricValue()))


def prepare_atlas(atlas: sitk.Image, settings: RegistrationSettings = RegistrationSettings()) -> sitk.Image:
    """The atlas labels on the registration grid, cropped around the lungs (cheap if already done)."""
    if atlas.GetSpacing() != (settings.spacing_mm,) * 3 or atlas.GetDirection() != IDENTITY:
        atlas = on_isotropic_grid(atlas, settings.spacing_mm)
    return _around_lungs(atlas, ATLAS_MARGIN_MM)


def on_isotropic_grid(labels: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``labels`` resampled onto an axis-aligned isotropic grid spanning the same world box."""
    low, high = world_bounds(labels)
    size = np.maximum(1, np.floor((high - low) / spacing_mm).astype(int) + 1)
    grid = make_grid(low, size, (spacing_mm,) * 3)
    return array_to_image(resample_labels(labels, grid, N_LABELS), grid)


def initial_transform(subject: sitk.Image, atlas: sitk.Image) -> sitk.AffineTransform:
    """Subject -> atlas start: centre of mass in x and y, lung-area profile match in z.

    Both images are axis-aligned label grids. The subject's lung area per slice A_s(z) is
    compared with k A_a((z - t) / s) over a grid of cranio-caudal scales s and shifts t, with the
    in-plane area factor k fitted by least squares for each pair (so height and width scale
    separately: scans at lower inflation have lungs shorter in z than wide). The best (s, t)
    fixes z, sqrt(k) the in-plane scale, and x, y come from the centres of mass of the subject
    lungs and of the atlas lungs in the matched slab.
    """
    s_mask = sitk.GetArrayFromImage(subject) > 0
    a_mask = sitk.GetArrayFromImage(atlas) > 0
    s_z, s_area = _area_profile(subject, s_mask)
    a_z, a_area = _area_profile(atlas, a_mask)
    best = (np.inf, 1.0, 0.0, 1.0)
    for scale in INIT_SCALES:
        shifts = np.arange(s_z[0] - scale * a_z[-1], s_z[-1] - scale * a_z[0] + INIT_SHIFT_STEP_MM, INIT_SHIFT_STEP_MM)
        atlas_area = np.interp((s_z[None, :] - shifts[:, None]) / scale, a_z, a_area, left=0.0, right=0.0)
        # Compare on every scanned slice: lungs predicted where none were scanned cost as much
        # as scanned lungs left unexplained.
        k = np.clip(atlas_area @ s_area / np.maximum(np.sum(atlas_area**2, axis=1), 1e-9), INIT_SCALES[0] ** 2, INIT_SCALES[-1] ** 2)
        error = np.sum((k[:, None] * atlas_area - s_area[None, :]) ** 2, axis=1)
        i = int(np.argmin(error))
        if error[i] < best[0]:
            best = (float(error[i]), float(scale), float(shifts[i]), float(np.sqrt(k[i])))
    _, scale, shift, in_plane = best
    s_centre = _centre_of_mass(subject, s_mask)
    slab = (a_z >= (s_z[0] - shift) / scale) & (a_z <= (s_z[-1] - shift) / scale)
    a_slab = a_mask & slab[:, None, None]
    a_centre = _centre_of_mass(atlas, a_slab if a_slab.any() else a_mask)
    target = np.array([a_centre[0], a_centre[1], (s_centre[2] - shift) / scale])
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(v) for v in s_centre])
    transform.SetMatrix([1.0 / in_plane, 0, 0, 0, 1.0 / in_plane, 0, 0, 0, 1.0 / scale])
    transform.SetTranslation([float(v) for v in target - s_centre])
    return transform


def lungs_cut(labels: sitk.Image) -> tuple[bool, bool]:
    """Whether the lungs of an axis-aligned label grid reach its (first, last) slice."""
    slices = sitk.GetArrayViewFromImage(labels).any(axis=(1, 2))
    return bool(slices[0]), bool(slices[-1])


def covers_part_of_lungs(labels: sitk.Image) -> bool:
    """True when the lungs of an axis-aligned label grid reach its first or last slice (partial coverage)."""
    return any(lungs_cut(labels))


def _restricted(initial: sitk.AffineTransform) -> sitk.Similarity3DTransform:
    """The initial transform as a similarity: its centre and translation, one scale (geometric mean), no rotation yet."""
    scales = np.diag(np.array(initial.GetMatrix()).reshape(3, 3))
    out = sitk.Similarity3DTransform()
    out.SetScale(float(np.prod(scales) ** (1.0 / 3.0)))
    out.SetCenter(initial.GetCenter())
    out.SetTranslation(initial.GetTranslation())
    return out


def label_dice(subject: sitk.Image, atlas: sitk.Image, subject_to_atlas: sitk.Transform) -> tuple[float, float, float]:
    """Dice (lungs, right, left) of the atlas labels warped onto the subject grid vs the subject labels."""
    warped = sitk.GetArrayFromImage(sitk.Resample(atlas, subject, subject_to_atlas, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    labels = sitk.GetArrayFromImage(subject)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 2.0 * float(np.count_nonzero(a & b)) / total if total else 0.0

    return dice(warped > 0, labels > 0), dice(warped == 1, labels == 1), dice(warped == 2, labels == 2)


def _method(settings: RegistrationSettings, fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if settings.metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    else:
        method.SetMetricAsMeanSquares()
    # Image gradients at the sample points only: ITK's default gradient filter would compute a
    # gradient image of the whole moving image at every level, which costs more than the fit.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    voxels = float(np.prod(fixed.GetSize()))
    if settings.sampling_fraction is not None:
        fractions = [settings.sampling_fraction] * len(settings.shrink_factors)
    else:
        fractions = [min(1.0, settings.samples_per_level * f**3 / voxels) for f in settings.shrink_factors]
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(fractions, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=settings.learning_rate, minStep=settings.min_step,
                                                    numberOfIterations=settings.iterations, relaxationFactor=0.6,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run ITK on one thread inside the block.

    ITK sums the metric over threads in a varying order, so with several threads two runs differ
    (by up to 0.3 mm after the optimiser's path diverges) and a resumed cache would not match an
    uninterrupted one. With 10,000 samples per level the fit is no slower on one thread.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _around_lungs(labels: sitk.Image, margin_mm: float) -> sitk.Image:
    """The part of an isotropic label grid around its lungs (lungs plus ``margin_mm``)."""
    array = sitk.GetArrayFromImage(labels) > 0
    if not array.any():
        return labels
    margin = int(np.ceil(margin_mm / labels.GetSpacing()[0]))
    index = np.array([np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)])
    low = np.maximum(index[:, 0] - margin, 0)[::-1]
    high = np.minimum(index[:, 1] + margin + 1, array.shape)[::-1]
    return sitk.RegionOfInterest(labels, [int(v) for v in high - low], [int(v) for v in low])


def _area_profile(labels: sitk.Image, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World z (mm) of each slice of an axis-aligned grid and its lung area (mm^2)."""
    sx, sy, sz = labels.GetSpacing()
    z = labels.GetOrigin()[2] + sz * np.arange(mask.shape[0])
    return z, mask.sum(axis=(1, 2)) * sx * sy


def _centre_of_mass(labels: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """World centre (x, y, z mm) of ``mask`` on ``labels``'s grid."""
    index = mask_centre(mask)[::-1]
    return np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The affine inside what ``ImageRegistrationMethod.Execute`` returns (possibly a composite)."""
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetBackTransform()
    if transform.GetName() == "AffineTransform":
        return sitk.AffineTransform(transform)
    # A similarity, written as the affine it is.
    centre = np.array(transform.GetFixedParameters()[:3])
    image_of_centre = np.array(transform.TransformPoint([float(v) for v in centre]))
    columns = [np.array(transform.TransformPoint([float(v) for v in centre + e])) - image_of_centre for e in np.eye(3)]
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(v) for v in centre])
    affine.SetMatrix([float(v) for v in np.array(columns).T.ravel()])
    affine.SetTranslation([float(v) for v in image_of_centre - centre])
    return affine
