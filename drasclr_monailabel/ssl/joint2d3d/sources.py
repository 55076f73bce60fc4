"""Find the volumes a joint image-volume run trains on.

The data root (``drasclr pretrain --cache ROOT``) may be:

* a preprocessing cache (``<id>/<id>_qa.json``, docs/formats.md): 1 mm scans registered to an
  atlas, so every slice's atlas z is known;
* a cohort folder with ``manifest.csv``, or a CSV file itself, with an ``image`` column (paths
  relative to the CSV) and optionally ``id`` (e.g. the output of ``drasclr synth``);
* a folder of scan files (NIfTI, NRRD, MHA; searched recursively) or of DICOM series (each folder
  that directly holds DICOM files is one series);
* a single scan file or DICOM series folder.

Only paths are collected here; scans are read when first needed (:mod:`.stacks`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.images2d import has_dicom_preamble
from drasclr_monailabel.io.readers import VOLUME_SUFFIXES, scan_id_from_path

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class VolumeEntry:
    """One training volume.

    Attributes:
        volume_id: its name (cache or manifest id, else from the file name).
        path: scan file or DICOM folder, or the cache scan folder ``CACHE/<id>``.
        cached: a preprocessing-cache scan (1 mm, cropped to the lungs, registered to an atlas).
    """

    volume_id: str
    path: Path
    cached: bool = False


def find_volumes(root: str | Path) -> list[VolumeEntry]:
    """The volumes under ``root`` (see the module docstring), in a stable order.

    Raises:
        InputError: ``root`` does not exist, a manifest is malformed or names a missing file, or
            no volume is found.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "does not exist")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return _from_manifest(root)
        return [VolumeEntry(scan_id_from_path(root), root)]
    if (root / MANIFEST_NAME).is_file():
        return _from_manifest(root / MANIFEST_NAME)
    cached = sorted(p.parent for p in root.glob("*/*_qa.json") if p.name == f"{p.parent.name}_qa.json")
    if cached:
        return [VolumeEntry(folder.name, folder, cached=True) for folder in cached]
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_volume_file(p))
    if files:
        return _unique_ids([VolumeEntry(scan_id_from_path(p), p) for p in files])
    series = sorted({p.parent for p in root.rglob("*") if p.is_file() and _is_dicom_file(p)})
    if series:
        return _unique_ids([VolumeEntry(scan_id_from_path(folder), folder) for folder in series])
    raise InputError(root, "holds no volume: expected a preprocessing cache, a manifest.csv, scan files "
                           f"({', '.join(VOLUME_SUFFIXES)}) or DICOM series")


def _from_manifest(path: Path) -> list[VolumeEntry]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({exc})") from None
    if not rows or "image" not in rows[0]:
        raise InputError(path, "needs an 'image' column and at least one row")
    entries = []
    for number, row in enumerate(rows, start=2):
        image = (path.parent / (row["image"] or "").strip())
        if not row["image"] or not image.exists():
            raise InputError(path, f"line {number}: image '{row['image']}' does not exist")
        entries.append(VolumeEntry((row.get("id") or "").strip() or scan_id_from_path(image), image))
    return _unique_ids(entries)


def _unique_ids(entries: list[VolumeEntry]) -> list[VolumeEntry]:
    """Make ids unique by suffixing repeats (two series folders may share a name)."""
    seen: dict[str, int] = {}
    unique = []
    for entry in entries:
        count = seen.get(entry.volume_id, 0)
        seen[entry.volume_id] = count + 1
        unique.append(entry if count == 0 else VolumeEntry(f"{entry.volume_id}-{count}", entry.path, entry.cached))
    return unique


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES) and not name.startswith(".tmp-")


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or has_dicom_preamble(path)
