"""Convert emphysema label maps to 3D Slicer Chest Imaging Platform (CIP) label-map values.

A CIP label map stores a chest *type* and a chest *region* in one 16-bit value:
``value = (type << 8) + region`` (type in the most significant byte). Types used here:
paraseptal 10/11/12, centrilobular 16/17/18, panlobular 19/20/21 (mild/moderate/severe).
Plain binary emphysema (subtype unknown) maps to type 4 (emphysematous, no grade).
Regions: the lung thirds 9-14 (left upper, middle, lower, right upper, middle, lower). Lung voxels
without emphysema keep their region with type 0 (undefined), so the lungs stay visible in CIP.

The severity grade is per lung zone (each lung's upper/middle/lower third, as in
:mod:`~drasclr_monailabel.emphysema.regions`), from the share of the zone labelled emphysema of
any subtype: mild below 5 % (the Fleischner Society's trace and mild extent, <0.5 % and
0.5-5 % of a zone), moderate from 5 % to below 25 %, severe from 25 % (more than a quarter of the
zone, the first step of Goddard-type visual scores). The cut-offs are a documented convention,
not a validated scale; pass others with ``grade_cutoffs_percent``.
"""

from __future__ import annotations

import numpy as np

from drasclr_monailabel.emphysema.regions import N_ZONE_CODES, lung_zones

CIP_TYPES = {
    1: (16, 17, 18),  # centrilobular: mild, moderate, severe
    2: (19, 20, 21),  # panlobular
    3: (10, 11, 12),  # paraseptal
}
"""Project label value -> CIP chest-type codes for mild, moderate, severe."""

CIP_REGION_OF_ZONE = np.array([0, 12, 13, 14, 9, 10, 11], dtype=np.uint16)
"""Zone code (0 outside, 1-3 right upper/middle/lower, 4-6 left) -> CIP chest-region code."""

CIP_EMPHYSEMATOUS = 4
GRADE_CUTOFFS_PERCENT = (5.0, 25.0)
GRADES = ("mild", "moderate", "severe")


def zone_grades(labels: np.ndarray, zone_codes: np.ndarray,
                cutoffs_percent: tuple[float, float] = GRADE_CUTOFFS_PERCENT) -> np.ndarray:
    """Severity grade index (0 mild, 1 moderate, 2 severe) of each zone code (N_ZONE_CODES,).

    ``labels`` > 0 is emphysema; the grade is from its percentage of each zone's lung voxels.
    """
    lung = np.bincount(zone_codes.ravel(), minlength=N_ZONE_CODES).astype(np.float64)
    emphysema = np.bincount(zone_codes[labels > 0].ravel(), minlength=N_ZONE_CODES)
    percent = 100.0 * emphysema / np.maximum(lung, 1.0)
    return np.searchsorted(np.asarray(cutoffs_percent), percent, side="right").astype(np.uint8)


def to_cip_labelmap(
    labels: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    direction: tuple[float, ...],
    grade_cutoffs_percent: tuple[float, float] = GRADE_CUTOFFS_PERCENT,
    binary: bool = False,
) -> np.ndarray:
    """A CIP label map (uint16, (Z, Y, X)) from a project label map.

    Args:
        labels: uint8 (Z, Y, X): 0 background, 1 centrilobular, 2 panlobular, 3 paraseptal
            (e.g. :func:`~drasclr_monailabel.emphysema.pseudo_labels.laa_pseudo_labels`).
            Emphysema outside the lung mask is dropped (CIP types belong to a lung region).
        lungs: uint8 (Z, Y, X) lung mask, 0 outside / 1 right / 2 left.
        spacing, direction: the grid's ITK geometry (to find the cranio-caudal axis and thirds).
        grade_cutoffs_percent: zone emphysema percentages where moderate and severe start.
        binary: ``labels`` > 0 is emphysema of unknown subtype (type 4, no grade).

    Returns:
        ``(type << 8) + region`` per voxel; 0 outside the lungs.
    """
    if labels.shape != lungs.shape:
        raise ValueError(f"label map shape {labels.shape} differs from the lung mask's {lungs.shape}")
    codes = lung_zones(lungs, spacing, direction).codes
    if binary:
        types = np.where((labels > 0) & (codes > 0), CIP_EMPHYSEMATOUS, 0).astype(np.uint16)
        return (types << 8) + CIP_REGION_OF_ZONE[codes]
    grades = zone_grades(labels, codes, grade_cutoffs_percent)
    types = np.zeros((4, N_ZONE_CODES), dtype=np.uint16)  # [label, zone code] -> CIP type
    for label, by_grade in CIP_TYPES.items():
        types[label, 1:] = np.asarray(by_grade, dtype=np.uint16)[grades[1:]]
    safe_labels = np.where(labels <= 3, labels, 0)
    return (types[safe_labels, codes] << 8) + CIP_REGION_OF_ZONE[codes]
