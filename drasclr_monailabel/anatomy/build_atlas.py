"""Build a lung atlas group-wise from several subjects' lung masks.

1. Lung labels of every subject (the package's own lung mask, on its working grid).
2. Reference: the subject whose lung volume is the median.
3. Register every subject affinely to the current template, warp its right and left lung
   indicators onto the template grid, average them, and threshold: lung where the mean lung
   probability is at least 0.5, the more probable side wins.
4. Remove the reference's size and pose from the average: resample it by the inverse of the
   mean linear part of the subject transforms (about the lungs' centre).
5. Repeat 3-4 once against the averaged template, then put the result on a 1 mm grid cropped to
   the lungs plus a margin and write it with its landmark grid (:func:`save_atlas`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from drasclr_monailabel.anatomy.atlas import Atlas, save_atlas
from drasclr_monailabel.anatomy.grid import array_to_image, make_grid, resample_labels
from drasclr_monailabel.anatomy.registration import Registration, on_isotropic_grid, register_to_atlas
from drasclr_monailabel.anatomy.inputs import ScanEntry
from drasclr_monailabel.errors import DrasclrError, InputError

logger = logging.getLogger(__name__)

TEMPLATE_SPACING_MM = 2.0
TEMPLATE_MARGIN_MM = 60.0
# Background kept around the lungs of the final 1 mm atlas: registration samples subject points
# up to 20 mm outside the lungs and patches reach 16 mm beyond their centre.
ATLAS_MARGIN_MM = 30.0
ROUNDS = 2
MIN_SUBJECTS = 1


@dataclass(frozen=True)
class Subject:
    """One subject's lung labels (0 / 1 right / 2 left) on any grid, and where they came from."""

    name: str
    labels: sitk.Image


def build_atlas(subjects: Sequence[Subject], out: str | Path, name: str, provenance: dict[str, Any] | None = None,
                progress: bool = True) -> Atlas:
    """Average the subjects' lungs into an atlas folder ``out`` (see the module docstring).

    Raises:
        InputError: fewer than one subject.
    """
    if len(subjects) < MIN_SUBJECTS:
        raise InputError(out, "no usable subjects to build an atlas from")
    volumes = [float(np.count_nonzero(sitk.GetArrayViewFromImage(s.labels))) * float(np.prod(s.labels.GetSpacing())) for s in subjects]
    reference = subjects[int(np.argsort(volumes)[len(volumes) // 2])]
    template = _template_grid(reference.labels)
    dice: list[float] = []
    for round_index in range(ROUNDS):
        steps = tqdm(subjects, desc=f"atlas round {round_index + 1}/{ROUNDS}", unit="subject", disable=not progress)
        registrations = [register_to_atlas(s.labels, template) for s in steps]
        template = _unbiased_average(subjects, registrations, template)
        dice = [r.dice for r in registrations]
        logger.info("atlas round %d: Dice to template min %.3f, median %.3f", round_index + 1, min(dice), float(np.median(dice)))
    lungs = _final_grid(template)
    details = {"reference": reference.name, "subjects": [{"name": s.name, "dice_to_template": round(d, 4)} for s, d in zip(subjects, dice)]}
    return save_atlas(out, lungs, name, {**(provenance or {}), **details})


def phantom_subjects(n: int, first_seed: int = 0, spacing: tuple[float, float, float] = (2.0, 2.0, 2.5)) -> Iterable[Subject]:
    """Lung labels of ``n`` thorax phantoms (seeds ``first_seed`` ...), segmented like real scans."""
    from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
    from drasclr_monailabel.data.phantom import make_thorax_phantom

    for seed in range(first_seed, first_seed + n):
        case = make_thorax_phantom(spacing=spacing, seed=seed)
        yield Subject(name=f"phantom-seed-{seed}", labels=lung_labels_working_grid(case.volume))


def cohort_subjects(entries: Iterable[ScanEntry]) -> Iterable[Subject]:
    """Lung labels of each scan; a scan that cannot be read or has no lungs is logged and skipped."""
    from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
    from drasclr_monailabel.io.readers import read_ct

    for entry in entries:
        try:
            labels = lung_labels_working_grid(read_ct(entry.path))
        except DrasclrError as exc:
            logger.warning("skipped %s: %s", entry.scan_id, exc)
            continue
        yield Subject(name=entry.scan_id, labels=labels)


def _template_grid(labels: sitk.Image) -> sitk.Image:
    """The reference's labels on a 2 mm grid around its lungs with a wide margin."""
    iso = on_isotropic_grid(labels, TEMPLATE_SPACING_MM)
    return _crop_around_lungs(iso, TEMPLATE_MARGIN_MM)


def _unbiased_average(subjects: Sequence[Subject], registrations: Sequence[Registration], template: sitk.Image) -> sitk.Image:
    """Mean lung probabilities of the warped subjects, moved to the subjects' mean size and pose."""
    probabilities = np.zeros((2,) + template.GetSize()[::-1], dtype=np.float32)
    for subject, registration in zip(subjects, registrations):
        for side in (1, 2):
            indicator = sitk.Cast(subject.labels == side, sitk.sitkFloat32)
            warped = sitk.Resample(indicator, template, registration.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            probabilities[side - 1] += sitk.GetArrayViewFromImage(warped)
    probabilities /= len(subjects)
    labels = np.where(probabilities.sum(axis=0) >= 0.5, np.argmax(probabilities, axis=0) + 1, 0).astype(np.uint8)
    average = array_to_image(labels, template)
    mean_linear = np.mean([np.array(r.transform.GetMatrix()).reshape(3, 3) for r in registrations], axis=0)
    to_average = sitk.AffineTransform(3)  # output (mean-size) point -> template point
    to_average.SetCenter([float(v) for v in _lung_centre(average)])
    to_average.SetMatrix([float(v) for v in np.linalg.inv(mean_linear).ravel()])
    grid = _grown_grid(template, mean_linear)
    moved = array_to_image(resample_labels(average, grid, 2, transform=to_average), grid)
    return _crop_around_lungs(moved, TEMPLATE_MARGIN_MM)


def _grown_grid(template: sitk.Image, linear: np.ndarray) -> sitk.Image:
    """The template grid enlarged enough to hold the template after a ``linear`` scaling."""
    growth = max(1.0, float(np.max(np.abs(np.linalg.eigvals(linear)))))
    size = np.ceil(np.array(template.GetSize()) * growth).astype(int)
    centre = np.array(template.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in template.GetSize()]))
    origin = centre - (size - 1) / 2.0 * np.array(template.GetSpacing())
    return make_grid(origin, size, template.GetSpacing())


def _lung_centre(labels: sitk.Image) -> np.ndarray:
    index = [float(np.mean(v)) for v in np.nonzero(sitk.GetArrayViewFromImage(labels))[::-1]]
    return np.array(labels.TransformContinuousIndexToPhysicalPoint(index))


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


def _final_grid(template: sitk.Image) -> sitk.Image:
    """The template on a 1 mm grid with whole-millimetre origin, cropped to lungs + ATLAS_MARGIN_MM."""
    array = sitk.GetArrayViewFromImage(template)
    index = np.array([np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)])[::-1]
    low = np.floor(np.array(template.TransformIndexToPhysicalPoint([int(v) for v in index[:, 0]])) - ATLAS_MARGIN_MM)
    high = np.ceil(np.array(template.TransformIndexToPhysicalPoint([int(v) for v in index[:, 1]])) + ATLAS_MARGIN_MM)
    grid = make_grid(low, (high - low).astype(int) + 1, (1.0, 1.0, 1.0))
    return array_to_image(resample_labels(template, grid, 2, smoothing_mm=1.0), grid)
