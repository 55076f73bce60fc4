"""Build a lung atlas group-wise from several subjects' lung masks (and lobes, where given).

1. Lung labels of every subject (the package's own lung mask, on its working grid).
2. Reference: among the subjects whose scan covers the whole lungs, the one whose lung volume
   is the median.
3. Register every subject affinely to the current template, warp its right and left lung
   indicators onto the template grid, average them, and threshold: lung where the mean lung
   probability is at least 0.5, the more probable side wins. A partial scan (its lungs reach
   its first or last slice) counts only where it was scanned: the average at a voxel is over
   the subjects that saw it.
4. Remove the reference's size and pose from the average: resample it by the inverse of the
   mean linear part of the full-coverage subjects' transforms (about the lungs' centre).
5. Repeat 3-4 once against the averaged template, then put the result on a 1 mm grid cropped to
   the lungs plus a margin and write it with its landmark grid (:func:`save_atlas`).
6. Lobes: subjects with a lobe map (codes of :mod:`~drasclr_monailabel.anatomy.lobes`) are
   averaged the same way in the last round; each atlas lung voxel takes the most probable lobe
   of its side, and voxels no lobe map reached take the nearest lobe of their side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from scipy import ndimage

from drasclr_monailabel.anatomy.atlas import Atlas, save_atlas
from drasclr_monailabel.anatomy.grid import array_to_image, make_grid, resample_labels
from drasclr_monailabel.anatomy.inputs import ScanEntry
from drasclr_monailabel.anatomy.lobes import LEFT_LOBES, LOBE_NAMES, RIGHT_LOBES, read_structure_lobes
from drasclr_monailabel.anatomy.registration import Registration, RegistrationSettings, covers_part_of_lungs, on_isotropic_grid, register_to_atlas
from drasclr_monailabel.errors import DrasclrError, InputError
from drasclr_monailabel.utils.mask_centre import mask_centre

logger = logging.getLogger(__name__)

TEMPLATE_SPACING_MM = 2.0
TEMPLATE_MARGIN_MM = 60.0
# Background kept around the lungs of the final 1 mm atlas: registration samples subject points
# up to 20 mm outside the lungs and patches reach 16 mm beyond their centre.
ATLAS_MARGIN_MM = 30.0
ROUNDS = 2
# How subjects are registered to the template. A partial subject (lung1 in the shipped atlas) gets
# the similarity at rotation weight 0.3 that the shipped atlas was built with: registered as
# ``drasclr preprocess`` now registers partial scans (similarity at weight 1, in-plane part and
# sagittal tilt refined), it made atlases whose held-out scans register with a lung Dice higher by
# 0.002-0.005 and keep slightly fewer landmarks over 10 % lung (96.0 / 95.8 % against 96.2 /
# 96.0 %; benchmarks/atlas_choice.py --subject-registration preprocess, docs/anatomy.md): no
# clear gain, and a rebuilt default atlas would invalidate every cache and encoder.
SUBJECT_REGISTRATION = RegistrationSettings(partial_transform="similarity", partial_rotation_weight=0.3)
MIN_SUBJECTS = 1


@dataclass(frozen=True)
class Subject:
    """One subject's lung labels (0 / 1 right / 2 left) on any grid, and where they came from.

    ``lobes``: optional lobe codes (0-5) on any grid of the same scan.
    """

    name: str
    labels: sitk.Image
    lobes: sitk.Image | None = None

    @property
    def covers_lungs(self) -> bool:
        """True when the lungs reach neither the first nor the last slice (the scan holds the whole lungs)."""
        return not covers_part_of_lungs(self.labels)


def build_atlas(subjects: Sequence[Subject], out: str | Path, name: str, provenance: dict[str, Any] | None = None,
                progress: bool = True, registration: RegistrationSettings = SUBJECT_REGISTRATION) -> Atlas:
    """Average the subjects' lungs into an atlas folder ``out`` (see the module docstring).

    ``registration``: how subjects are registered to the template (default
    :data:`SUBJECT_REGISTRATION`, as the shipped atlas was built).

    Raises:
        InputError: no subject, or no subject whose scan covers the whole lungs.
    """
    if len(subjects) < MIN_SUBJECTS:
        raise InputError(out, "no usable subjects to build an atlas from")
    full = [s for s in subjects if s.covers_lungs]
    if not full:
        raise InputError(out, "no subject's scan covers the whole lungs (all reach the first or last slice); "
                              "an atlas needs at least one full chest CT")
    volumes = [float(np.count_nonzero(sitk.GetArrayViewFromImage(s.labels))) * float(np.prod(s.labels.GetSpacing())) for s in full]
    reference = full[int(np.argsort(volumes)[len(volumes) // 2])]
    template = _template_grid(reference.labels)
    dice: list[float] = []
    lobes = None
    for round_index in range(ROUNDS):
        steps = tqdm(subjects, desc=f"atlas round {round_index + 1}/{ROUNDS}", unit="subject", disable=not progress)
        registrations = [register_to_atlas(s.labels, template, registration) for s in steps]
        template, lobes = _unbiased_average(subjects, registrations, template, with_lobes=round_index == ROUNDS - 1)
        dice = [r.dice for r in registrations]
        logger.info("atlas round %d: Dice to template min %.3f, median %.3f", round_index + 1, min(dice), float(np.median(dice)))
    lungs, lobe_map = _final_grid(template, lobes)
    details = {"reference": reference.name,
               "subjects": [{"name": s.name, "dice_to_template": round(d, 4), "whole_lungs": s.covers_lungs, "lobes": s.lobes is not None}
                            for s, d in zip(subjects, dice)]}
    return save_atlas(out, lungs, name, {**(provenance or {}), **details}, lobes=lobe_map)


def phantom_subjects(n: int, first_seed: int = 0, spacing: tuple[float, float, float] = (2.0, 2.0, 2.5)) -> Iterable[Subject]:
    """Lung labels of ``n`` thorax phantoms (seeds ``first_seed`` ...), segmented like real scans."""
    from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
    from drasclr_monailabel.data.phantom import make_thorax_phantom

    for seed in range(first_seed, first_seed + n):
        case = make_thorax_phantom(spacing=spacing, seed=seed)
        yield Subject(name=f"phantom-seed-{seed}", labels=lung_labels_working_grid(case.volume))


def sample_entries() -> list[ScanEntry]:
    """The real sample CTs the default atlas is built from (already fetched by ``drasclr sample-data``).

    LIDC-IDRI-0001 (full chest, with the lobes of its structure map) and the pyradiomics lung1
    and lung2 (upper and mid chest: they count where they were scanned).
    """
    from drasclr_monailabel.data.sample_data import cached_sample_path

    return [ScanEntry("lidc0001", cached_sample_path("lidc0001_image"), cached_sample_path("lidc0001_structures"),
                      cached_sample_path("lidc0001_structures_csv")),
            ScanEntry("lung1", cached_sample_path("lung1_image")),
            ScanEntry("lung2", cached_sample_path("lung2_image"))]


def cohort_subjects(entries: Iterable[ScanEntry]) -> Iterable[Subject]:
    """Lung labels (and lobes, where the entry names them) of each scan.

    A scan that cannot be read or has no lungs is logged and skipped; an unreadable lobe map is an
    error (the user asked for lobes).
    """
    from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
    from drasclr_monailabel.io.readers import read_ct

    for entry in entries:
        try:
            labels = lung_labels_working_grid(read_ct(entry.path))
        except DrasclrError as exc:
            logger.warning("skipped %s: %s", entry.scan_id, exc)
            continue
        yield Subject(name=entry.scan_id, labels=labels, lobes=_entry_lobes(entry))


def _entry_lobes(entry: ScanEntry) -> sitk.Image | None:
    """The entry's lobe codes (0-5), read by names when a names CSV is given."""
    if entry.lobes is None:
        return None
    if entry.lobe_names is not None:
        return read_structure_lobes(entry.lobes, entry.lobe_names)
    try:
        lobes = sitk.Cast(sitk.ReadImage(str(entry.lobes)), sitk.sitkUInt8)
    except RuntimeError as exc:
        raise InputError(entry.lobes, f"cannot be read as a lobe map ({str(exc).strip().splitlines()[-1]})") from None
    values = np.unique(sitk.GetArrayViewFromImage(lobes))
    if values.max() > max(LOBE_NAMES):
        raise InputError(entry.lobes, f"holds values up to {int(values.max())}; a lobe map holds 0-5 (or give lobe_names)")
    return lobes


def _template_grid(labels: sitk.Image) -> sitk.Image:
    """The reference's labels on a 2 mm grid around its lungs with a wide margin."""
    iso = on_isotropic_grid(labels, TEMPLATE_SPACING_MM)
    return _crop_around_lungs(iso, TEMPLATE_MARGIN_MM)


def _unbiased_average(subjects: Sequence[Subject], registrations: Sequence[Registration], template: sitk.Image,
                      with_lobes: bool) -> tuple[sitk.Image, sitk.Image | None]:
    """Mean lung probabilities of the warped subjects (and lobes), moved to the subjects' mean size and pose.

    A partial scan is weighted by where it was scanned; the mean size and pose come from the
    subjects that cover the whole lungs.
    """
    shape = template.GetSize()[::-1]
    lungs = np.zeros((2,) + shape, dtype=np.float32)
    weight = np.zeros(shape, dtype=np.float32)
    lobe_sum = np.zeros((len(LOBE_NAMES),) + shape, dtype=np.float32) if with_lobes else None
    for subject, registration in zip(subjects, registrations):
        coverage = 1.0 if subject.covers_lungs else _warp(_ones(subject.labels), template, registration)
        weight += coverage
        for side in (1, 2):
            lungs[side - 1] += coverage * _warp(subject.labels == side, template, registration)
        if lobe_sum is not None and subject.lobes is not None:
            for code in LOBE_NAMES:
                lobe_sum[code - 1] += coverage * _warp(subject.lobes == code, template, registration)
    lungs /= np.maximum(weight, 1e-6)
    labels = np.where(lungs.sum(axis=0) >= 0.5, np.argmax(lungs, axis=0) + 1, 0).astype(np.uint8)
    average = array_to_image(labels, template)
    full = [r for s, r in zip(subjects, registrations) if s.covers_lungs]
    mean_linear = np.mean([np.array(r.transform.GetMatrix()).reshape(3, 3) for r in full], axis=0)
    to_average = sitk.AffineTransform(3)  # output (mean-size) point -> template point
    to_average.SetCenter([float(v) for v in _lung_centre(average)])
    to_average.SetMatrix([float(v) for v in np.linalg.inv(mean_linear).ravel()])
    grid = _grown_grid(template, mean_linear)
    moved = _crop_around_lungs(array_to_image(resample_labels(average, grid, 2, transform=to_average), grid), TEMPLATE_MARGIN_MM)
    if lobe_sum is None or not lobe_sum.any():
        return moved, None
    lobes = array_to_image(_lobes_of(labels, lobe_sum), template)
    codes = resample_labels(lobes, moved, len(LOBE_NAMES), transform=to_average)
    return moved, array_to_image(_lobes_of(sitk.GetArrayFromImage(moved), None, codes), moved)


def _warp(mask: sitk.Image, template: sitk.Image, registration: Registration) -> np.ndarray:
    """float32 (Z, Y, X): a subject's 0/1 image linearly interpolated onto the template grid."""
    indicator = sitk.Cast(mask, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(indicator, template, registration.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def _ones(image: sitk.Image) -> sitk.Image:
    """1 on every voxel of ``image``'s grid (its scanned field of view)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def _lobes_of(lungs: np.ndarray, probabilities: np.ndarray | None, codes: np.ndarray | None = None) -> np.ndarray:
    """Lobe codes (uint8) for the lung voxels of ``lungs`` (0 / 1 right / 2 left).

    From lobe ``probabilities`` (5, Z, Y, X): the most probable lobe of the voxel's side; or from
    given ``codes``, kept where they agree with the side. Lung voxels left without a lobe take the
    nearest lobe of their side.
    """
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for side, side_codes in ((1, RIGHT_LOBES), (2, LEFT_LOBES)):
        inside = lungs == side
        if not inside.any():
            continue
        if probabilities is not None:
            picked = np.array(side_codes)[np.argmax(probabilities[[c - 1 for c in side_codes]], axis=0)]
            known = probabilities[[c - 1 for c in side_codes]].max(axis=0) > 0
        else:
            picked = codes
            known = np.isin(codes, side_codes)
        seeds = inside & known
        out[seeds] = picked[seeds]
        missing = inside & ~known
        if missing.any() and seeds.any():
            box = ndimage.find_objects(inside.astype(np.uint8))[0]  # the side's lung: keeps the transform small
            nearest = ndimage.distance_transform_edt(~seeds[box], return_distances=False, return_indices=True)
            filled = out[box][tuple(nearest)]
            out[box][missing[box]] = filled[missing[box]]
    return out


def _grown_grid(template: sitk.Image, linear: np.ndarray) -> sitk.Image:
    """The template grid enlarged enough to hold the template after a ``linear`` scaling."""
    growth = max(1.0, float(np.max(np.abs(np.linalg.eigvals(linear)))))
    size = np.ceil(np.array(template.GetSize()) * growth).astype(int)
    centre = np.array(template.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in template.GetSize()]))
    origin = centre - (size - 1) / 2.0 * np.array(template.GetSpacing())
    return make_grid(origin, size, template.GetSpacing())


def _lung_centre(labels: sitk.Image) -> np.ndarray:
    index = mask_centre(sitk.GetArrayViewFromImage(labels))[::-1]
    return np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def _crop_around_lungs(labels: sitk.Image, margin_mm: float) -> sitk.Image:
    """``labels`` on an axis-aligned grid of the same spacing: its lungs plus ``margin_mm`` (may exceed it)."""
    array = sitk.GetArrayViewFromImage(labels)
    index = np.array([np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)])[::-1]
    spacing = np.array(labels.GetSpacing())
    low = np.array(labels.TransformIndexToPhysicalPoint([int(v) for v in index[:, 0]])) - margin_mm
    high = np.array(labels.TransformIndexToPhysicalPoint([int(v) for v in index[:, 1]])) + margin_mm
    size = np.floor((high - low) / spacing).astype(int) + 1
    grid = make_grid(low, size, spacing)
    return sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _final_grid(template: sitk.Image, lobes: sitk.Image | None) -> tuple[sitk.Image, sitk.Image | None]:
    """The template (and its lobes) on a 1 mm grid with whole-millimetre origin, cropped to lungs + ATLAS_MARGIN_MM."""
    array = sitk.GetArrayViewFromImage(template)
    index = np.array([np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)])[::-1]
    low = np.floor(np.array(template.TransformIndexToPhysicalPoint([int(v) for v in index[:, 0]])) - ATLAS_MARGIN_MM)
    high = np.ceil(np.array(template.TransformIndexToPhysicalPoint([int(v) for v in index[:, 1]])) + ATLAS_MARGIN_MM)
    grid = make_grid(low, (high - low).astype(int) + 1, (1.0, 1.0, 1.0))
    lungs = resample_labels(template, grid, 2, smoothing_mm=1.0)
    if lobes is None:
        return array_to_image(lungs, grid), None
    codes = resample_labels(lobes, grid, len(LOBE_NAMES), smoothing_mm=1.0)
    return array_to_image(lungs, grid), array_to_image(_lobes_of(lungs, None, codes), grid)
