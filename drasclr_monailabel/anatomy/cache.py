"""Write and recognise preprocessed scans in the cache format (docs/formats.md).

Every file goes through an atomic write and ``<id>_qa.json`` is written last, so a scan folder
is complete exactly when its ``_qa.json`` exists and names the same format, source and atlas.
Anything else (a crash, a kill, a changed atlas) makes the scan be redone from scratch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import drasclr_monailabel
from drasclr_monailabel.anatomy.atlas import Atlas
from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.anatomy.pipeline import PipelineSettings, PreprocessedScan
from drasclr_monailabel.anatomy.qa import write_qa_png
from drasclr_monailabel.anatomy.registration import Registration
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.utils.atomic import TMP_PREFIX, save_npy, write_json, write_with
from drasclr_monailabel.utils.fingerprint import file_fingerprint

ARRAY_SUFFIXES = ("_image.npy", "_lung.npy", "_landmarks.npy", "_valid.npy")
FILE_SUFFIXES = ARRAY_SUFFIXES + ("_affine.tfm", "_qa.png", "_qa.json")


def scan_folder(cache: str | Path, scan_id: str) -> Path:
    return Path(cache) / scan_id


def qa_path(cache: str | Path, scan_id: str) -> Path:
    return scan_folder(cache, scan_id) / f"{scan_id}_qa.json"


def is_complete(cache: str | Path, scan_id: str, source: str | Path, atlas_id: str, fingerprint: str | None = None) -> bool:
    """True when the scan was fully written from ``source`` against ``atlas_id`` in this format
    and, when ``fingerprint`` is given and the record has one, from that content of ``source``
    (``utils.fingerprint``; records written before the field existed carry none)."""
    path = qa_path(cache, scan_id)
    try:
        qa = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    folder = path.parent
    return (isinstance(qa, dict) and qa.get("format") == CACHE_FORMAT and qa.get("source") == str(Path(source).resolve())
            and (qa.get("atlas") or {}).get("id") == atlas_id
            and (fingerprint is None or qa.get("source_fingerprint") in (None, fingerprint))
            and all((folder / f"{scan_id}{suffix}").is_file() for suffix in FILE_SUFFIXES))


def recorded_atlas(cache: str | Path, scan_id: str) -> str | None:
    """The atlas id a scan's ``_qa.json`` names, or None when there is none (or it cannot be read)."""
    atlas = _recorded(cache, scan_id).get("atlas")
    return atlas.get("id") if isinstance(atlas, dict) else None


def recorded_format(cache: str | Path, scan_id: str) -> str | None:
    """The cache format a scan's ``_qa.json`` names, or None when there is none (or it cannot be read)."""
    found = _recorded(cache, scan_id).get("format")
    return found if isinstance(found, str) else None


def _recorded(cache: str | Path, scan_id: str) -> dict[str, Any]:
    """A scan's ``_qa.json`` as a dict ({} when missing, unreadable or not an object)."""
    try:
        qa = json.loads(qa_path(cache, scan_id).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return qa if isinstance(qa, dict) else {}


def clear_scan(cache: str | Path, scan_id: str) -> None:
    """Remove what an interrupted run may have left of a scan (its _qa.json first, then the rest)."""
    folder = scan_folder(cache, scan_id)
    if not folder.is_dir():
        return
    (folder / f"{scan_id}_qa.json").unlink(missing_ok=True)
    for path in folder.iterdir():
        if path.name.startswith(TMP_PREFIX) or any(path.name == f"{scan_id}{suffix}" for suffix in FILE_SUFFIXES):
            path.unlink(missing_ok=True)


def write_scan(cache: str | Path, scan_id: str, source: str | Path, scan: PreprocessedScan, atlas: Atlas,
               settings: PipelineSettings, timings: dict[str, float]) -> dict[str, Any]:
    """Write one scan folder; returns the QA record (also written, last, as ``<id>_qa.json``).

    ``timings`` (seconds per earlier stage) are recorded with the time spent writing added.
    """
    started = time.perf_counter()
    folder = scan_folder(cache, scan_id)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / scan_id
    save_npy(f"{stem}_image.npy", scan.image.astype(np.int16, copy=False))
    save_npy(f"{stem}_lung.npy", scan.lungs.astype(np.uint8, copy=False))
    save_npy(f"{stem}_landmarks.npy", scan.landmarks.astype(np.int32, copy=False))
    save_npy(f"{stem}_valid.npy", scan.valid.astype(bool, copy=False))
    write_with(f"{stem}_affine.tfm", lambda tmp: sitk.WriteTransform(scan.registration.transform, str(tmp)))
    write_qa_png(f"{stem}_qa.png", scan.image, scan.lungs, scan.landmarks, scan.valid,
                 f"{scan_id}: lung Dice {scan.registration.dice:.3f}, {int(scan.valid.sum())}/{len(scan.valid)} landmarks valid")
    qa = qa_record(scan_id, source, scan, atlas, settings, {**timings, "write": time.perf_counter() - started})
    write_json(f"{stem}_qa.json", qa)
    return qa


def qa_record(scan_id: str, source: str | Path, scan: PreprocessedScan, atlas: Atlas, settings: PipelineSettings,
              timings: dict[str, float]) -> dict[str, Any]:
    """The content of ``<id>_qa.json``."""
    registration = scan.registration
    return {
        "format": CACHE_FORMAT,
        "id": scan_id,
        "source": str(Path(source).resolve()),
        "source_fingerprint": file_fingerprint(source),
        "atlas": {"id": atlas.atlas_id, "n_landmarks": atlas.n_landmarks},
        "grid": scan.grid(),
        "interpolation": settings.interpolation,
        "registration": {
            "dice": round(registration.dice, 4), "dice_right": round(registration.dice_right, 4),
            "dice_left": round(registration.dice_left, 4), "metric": settings.registration.metric,
            "metric_value": registration.metric, "iterations": registration.iterations,
            "transform": "atlas world -> subject world (ITK, LPS mm)",
        },
        "lung_volume_ml": scan.lung_volumes_ml(),
        "landmarks": {"n": int(len(scan.valid)), "n_valid": int(scan.valid.sum())},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "warnings": list(scan.warnings),
        "package_version": drasclr_monailabel.__version__,
    }


def read_scan(cache: str | Path, scan_id: str) -> PreprocessedScan:
    """Read back a scan that :func:`write_scan` wrote (check :func:`is_complete` first).

    Raises:
        InputError: a file missing or unreadable (e.g. removed by another process meanwhile), or
            arrays that disagree with the recorded grid.
    """
    stem = scan_folder(cache, scan_id) / scan_id
    try:
        qa = json.loads(Path(f"{stem}_qa.json").read_text())
        image, lungs, landmarks, valid = (np.load(f"{stem}{suffix}", allow_pickle=False) for suffix in ARRAY_SUFFIXES)
        transform = sitk.AffineTransform(sitk.ReadTransform(f"{stem}_affine.tfm"))
        grid, registration = qa["grid"], qa["registration"]
        size = tuple(grid["size"][::-1])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"{stem}_*", f"cannot be read back as a preprocessed scan ({exc})") from None
    if image.shape != size or lungs.shape != size or landmarks.shape != (len(valid), 3):
        raise InputError(f"{stem}_*", f"arrays {image.shape}, {lungs.shape}, {landmarks.shape} disagree with the grid {size}")
    timings = dict(qa.get("timings_s") or {})
    return PreprocessedScan(
        image=image, lungs=lungs, origin=tuple(grid["origin"]), spacing=tuple(grid["spacing"]), direction=tuple(grid["direction"]),
        registration=Registration(transform=transform, dice=registration["dice"], dice_right=registration["dice_right"],
                                  dice_left=registration["dice_left"], metric=registration["metric_value"],
                                  iterations=registration["iterations"], seconds=float(timings.get("registration", 0.0))),
        landmarks=landmarks, valid=valid, timings=timings, warnings=list(qa.get("warnings") or []),
    )
