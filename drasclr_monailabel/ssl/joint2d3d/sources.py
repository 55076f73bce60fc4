"""Find the volumes a joint image-volume run trains on.

The data root (``drasclr pretrain --cache ROOT``) may be:

* a preprocessing cache (``<id>/<id>_qa.json``, docs/formats.md): 1 mm scans registered to an
  atlas, so every slice's atlas z is known;
* a cohort folder with ``manifest.csv``, or a CSV file itself, with an ``image`` column (paths
  relative to the CSV) and optionally ``id`` (e.g. the output of ``drasclr synth``);
* a folder of scan files (NIfTI, NRRD, MHA) and DICOM series sub-folders, or a folder that is
  itself one DICOM series;
* a single scan file or DICOM series folder.

Only paths are collected here; scans are read when first needed (:mod:`.stacks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drasclr_monailabel.anatomy.inputs import list_scans
from drasclr_monailabel.errors import InputError


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

    A preprocessing cache is recognised by its ``<id>/<id>_qa.json`` files; anything else is
    listed exactly as ``drasclr preprocess`` lists its input
    (:func:`~drasclr_monailabel.anatomy.inputs.list_scans`).

    Raises:
        InputError: ``root`` does not exist, a manifest is malformed or names a missing file, or
            no volume is found.
    """
    root = Path(root)
    if root.is_dir():
        cached = sorted(p.parent for p in root.glob("*/*_qa.json") if p.name == f"{p.parent.name}_qa.json")
        if cached:
            return [VolumeEntry(folder.name, folder, cached=True) for folder in cached]
    entries = [VolumeEntry(entry.scan_id, entry.path) for entry in list_scans(root)]
    missing = [entry for entry in entries if not entry.path.exists()]
    if missing:
        raise InputError(root, f"names a volume that does not exist: {missing[0].path}")
    return entries
