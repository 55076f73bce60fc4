"""Where ``drasclr export-nnunet`` takes its cases from: a MONAI Label datastore or a manifest CSV.

- Datastore (the studies folder of the emphysema app, MONAI Label's local layout): images at the
  top level, final labels in ``labels/final/<image id>.nii.gz``. Images without a final label are
  unlabelled cases.
- Manifest: a CSV with an ``image`` column and optional ``id`` and ``label`` columns (the synthetic
  cohort's ``manifest.csv`` is one); paths are relative to the CSV's folder unless absolute; an
  empty ``label`` marks an unlabelled case.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import scan_id_from_path
from drasclr_monailabel.utils.atomic import TMP_PREFIX

DATASTORE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
"""What the emphysema app's datastore accepts as images (tasks/datastore.py)."""
FINAL_TAG = "final"
LABELS_FOLDER = "labels"


@dataclass(frozen=True)
class SourceCase:
    """One image to export and its label map (None: unlabelled)."""

    image_id: str
    image: Path
    label: Path | None


def cases_from_datastore(studies: str | Path, tag: str = FINAL_TAG) -> list[SourceCase]:
    """Images of a local MONAI Label datastore with their ``labels/<tag>/`` label, sorted by id."""
    studies = Path(studies)
    if not studies.is_dir():
        raise InputError(studies, "is not a folder (expected the studies folder of a MONAI Label datastore)")
    label_folder = studies / LABELS_FOLDER / tag
    cases = []
    for path in sorted(p for p in studies.iterdir() if p.is_file() and not p.name.startswith((".", TMP_PREFIX))):
        image_id = _strip_suffix(path.name)
        if image_id is None:
            continue
        labels = [label_folder / f"{image_id}{suffix}" for suffix in DATASTORE_IMAGE_SUFFIXES]
        cases.append(SourceCase(image_id, path, next((p for p in labels if p.is_file()), None)))
    if not cases:
        raise InputError(studies, f"holds no image ({', '.join(DATASTORE_IMAGE_SUFFIXES)}) at its top level")
    return cases


def cases_from_manifest(manifest: str | Path) -> list[SourceCase]:
    """Rows of a manifest CSV (``image`` required; ``id`` and ``label`` optional), in file order."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(manifest, "does not exist" if not manifest.exists() else "is not a file")
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        if "image" not in (reader.fieldnames or []):
            raise InputError(manifest, f"has no 'image' column (columns: {', '.join(reader.fieldnames or [])})")
        rows = list(reader)
    if not rows:
        raise InputError(manifest, "has no rows")
    cases = []
    for number, row in enumerate(rows, start=2):
        if not (row.get("image") or "").strip():
            raise InputError(manifest, f"line {number} has an empty 'image'")
        image = _resolve(manifest, row["image"])
        label = _resolve(manifest, row["label"]) if (row.get("label") or "").strip() else None
        for path in (image, label):
            if path is not None and not path.exists():
                raise InputError(path, f"does not exist (line {number} of {manifest.name})")
        cases.append(SourceCase((row.get("id") or "").strip() or scan_id_from_path(image), image, label))
    return cases


def _resolve(manifest: Path, value: str) -> Path:
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def _strip_suffix(name: str) -> str | None:
    lowered = name.lower()
    for suffix in DATASTORE_IMAGE_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return None
