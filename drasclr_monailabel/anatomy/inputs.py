"""The list of scans a batch command works on: a CSV manifest, a folder of scans, or one scan.

- CSV: a column ``image`` (file or DICOM series folder) and optionally ``id``; relative paths
  resolve against the CSV's folder. ``drasclr build-atlas`` also reads optional ``lobes`` (a lobe
  label map on the scan's grid) and ``lobe_names`` (a CSV naming the map's labels, when the map
  uses another tool's numbering; see :mod:`~drasclr_monailabel.anatomy.lobes`). Other columns are
  ignored, so the synthetic cohort's ``manifest.csv`` works as it is.
- Folder: a ``manifest.csv`` inside it is used if present; otherwise every CT file (NIfTI,
  NRRD, MHA) and every sub-folder (a DICOM series) is a scan; if the folder itself holds DICOM
  files it is one series.
- A single CT file or DICOM series folder is a list of one.

Scan ids are the CSV's ``id`` or the file name without its suffix; they name the output folders
and must be unique.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import VOLUME_SUFFIXES, scan_id_from_path
from drasclr_monailabel.io.sniff import is_dicom_file

MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True, order=True)
class ScanEntry:
    """One scan to process: its id (output folder name) and its file or series folder.

    ``lobes`` and ``lobe_names``: an optional lobe label map of the scan and the CSV naming its
    labels (None: the map holds the atlas lobe codes 1-5 itself).
    """

    scan_id: str
    path: Path
    lobes: Path | None = field(default=None, compare=False)
    lobe_names: Path | None = field(default=None, compare=False)


def list_scans(source: str | Path) -> list[ScanEntry]:
    """The scans named by ``source`` (CSV, folder, or one scan), sorted by id.

    Raises:
        InputError: ``source`` missing, a CSV without an ``image`` column, no scans found, or two
            scans with the same id.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = _from_csv(source)
    elif source.is_dir() and (source / MANIFEST_NAME).is_file():
        entries = _from_csv(source / MANIFEST_NAME)
    elif source.is_dir() and not _holds_dicom_files(source):
        entries = _from_folder(source)
    else:
        entries = [ScanEntry(scan_id_from_path(source), source)]
    _check_unique(entries, source)
    return sorted(entries)


def _from_csv(path: Path) -> list[ScanEntry]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({exc})") from None
    if not rows or "image" not in rows[0]:
        raise InputError(path, "needs a header with an 'image' column (and optionally 'id') and at least one row")
    entries = []
    for number, row in enumerate(rows, start=2):
        image = (row.get("image") or "").strip()
        if not image:
            raise InputError(path, f"row {number} has an empty 'image'")
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        scan_id = (row.get("id") or "").strip() or scan_id_from_path(image_path)
        if scan_id != scan_id_from_path(scan_id):
            raise InputError(path, f"row {number}: id {scan_id!r} must be usable as a folder name (letters, digits, '-', '_', '.')")
        lobes, names = (_optional_path(row, column, path.parent) for column in ("lobes", "lobe_names"))
        entries.append(ScanEntry(scan_id, image_path, lobes, names))
    return entries


def _optional_path(row: dict[str, str], column: str, folder: Path) -> Path | None:
    value = (row.get(column) or "").strip()
    if not value:
        return None
    return Path(value) if Path(value).is_absolute() else folder / value


def _from_folder(folder: Path) -> list[ScanEntry]:
    entries = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() or _is_volume_file(child):
            entries.append(ScanEntry(scan_id_from_path(child), child))
    if not entries:
        raise InputError(folder, f"holds no CT scans (files ending {', '.join(VOLUME_SUFFIXES)}, or DICOM series folders)")
    return entries


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


def _holds_dicom_files(folder: Path) -> bool:
    """True when ``folder`` itself holds DICOM files (it is a series, not a folder of scans)."""
    return any(is_dicom_file(p) for p in folder.iterdir())


def _check_unique(entries: list[ScanEntry], source: Path) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.scan_id in seen:
            raise InputError(source, f"two scans have the id {entry.scan_id!r} ({seen[entry.scan_id]} and {entry.path}); give them distinct ids")
        seen[entry.scan_id] = entry.path
