"""Lung lobes: the codes the atlas uses, and reading them from a named structure label map.

Lobe codes (``lobes.nii.gz`` of an atlas): 0 outside, 1 right upper, 2 right middle, 3 right
lower, 4 left upper, 5 left lower. Codes 1-3 are the right lung and 4-5 the left, so the lung
labels of the rest of the package (1 right, 2 left) follow from the lobes.

Structure label maps made by whole-body segmentation tools (e.g. the one shipped with
LIDC-IDRI-0001 in the sample data) come with a CSV naming each label; lobes are found by those
names (``lung_upper_lobe_right`` ...), never by a tool's numbering, which differs between tools
and versions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.errors import InputError

LOBE_NAMES = {1: "right upper", 2: "right middle", 3: "right lower", 4: "left upper", 5: "left lower"}
RIGHT_LOBES = (1, 2, 3)
LEFT_LOBES = (4, 5)
# Structure names (as whole-body segmentation tools write them) of each lobe code.
STRUCTURE_NAMES = {"lung_upper_lobe_right": 1, "lung_middle_lobe_right": 2, "lung_lower_lobe_right": 3,
                   "lung_upper_lobe_left": 4, "lung_lower_lobe_left": 5}


def read_structure_lobes(labels_path: str | Path, names_csv: str | Path) -> sitk.Image:
    """Lobe codes (uint8, 0-5, on the label map's own grid) from a structure label map and its names.

    Args:
        labels_path: integer label map (NIfTI, NRRD, ...).
        names_csv: CSV with a ``structure`` column and the label value in ``id`` (or ``label``).

    Raises:
        InputError: unreadable files, or a CSV that does not name all five lobes.
    """
    codes = _lobe_values(Path(names_csv))
    try:
        image = sitk.ReadImage(str(labels_path))
    except RuntimeError as exc:
        raise InputError(labels_path, f"cannot be read as a label map ({str(exc).strip().splitlines()[-1]})") from None
    values = sitk.GetArrayFromImage(image).astype(np.int64)
    lut = np.zeros(max(int(values.max()), max(codes)) + 1, dtype=np.uint8)
    for value, code in codes.items():
        lut[value] = code
    lobes = sitk.GetImageFromArray(lut[np.clip(values, 0, None)])
    lobes.CopyInformation(image)
    return lobes


def lungs_from_lobes(lobes: np.ndarray) -> np.ndarray:
    """Lung labels (0 outside, 1 right, 2 left) of a lobe-code array of any shape."""
    out = np.zeros(lobes.shape, dtype=np.uint8)
    out[np.isin(lobes, RIGHT_LOBES)] = 1
    out[np.isin(lobes, LEFT_LOBES)] = 2
    return out


def _lobe_values(path: Path) -> dict[int, int]:
    """{label value in the map: lobe code} read from the names CSV."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({exc})") from None
    key = "id" if rows and "id" in rows[0] else "label"
    found = {}
    for row in rows:
        code = STRUCTURE_NAMES.get((row.get("structure") or "").strip())
        if code is not None:
            try:
                found[int(row[key])] = code
            except (KeyError, TypeError, ValueError):
                raise InputError(path, f"row for {row.get('structure')} has no integer '{key}'") from None
    missing = sorted(set(STRUCTURE_NAMES) - {name for name, code in STRUCTURE_NAMES.items() if code in found.values()})
    if missing:
        raise InputError(path, f"names no label for {', '.join(missing)} (needs columns 'structure' and 'id')")
    return found
