"""Read a scan folder of the preprocessing cache for quantification.

A cache scan (``<id>/<id>_image.npy``, ``_lung.npy``, ``_qa.json``; docs/formats.md) is resampled
to 1 mm, which smooths noise and lowers %LAA-950, so the native CT remains the reference and the
report says so (:data:`CACHE_RESAMPLED_WARNING`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume

CACHE_RESAMPLED_WARNING = ("quantified on the preprocessing cache (resampled to 1 mm with B-spline interpolation): "
                           "resampling smooths noise and lowers %LAA-950; quantify the original CT for reference values")


def is_cache_scan(path: str | Path) -> bool:
    """True for a preprocessing-cache scan folder (``<id>/<id>_qa.json`` present)."""
    path = Path(path)
    return path.is_dir() and (path / f"{path.name}_qa.json").is_file()


def read_cache_scan(folder: str | Path) -> tuple[CTVolume, np.ndarray]:
    """The CT and lung mask of a preprocessing-cache scan folder, with the grid from its ``_qa.json``.

    Raises:
        InputError: unreadable ``_qa.json`` or grid, missing or mismatched ``.npy`` files.
    """
    folder = Path(folder)
    scan_id = folder.name
    qa_path = folder / f"{scan_id}_qa.json"
    try:
        grid = json.loads(qa_path.read_text())["grid"]
        spacing = tuple(float(v) for v in grid["spacing"])
        origin = tuple(float(v) for v in grid["origin"])
        direction = tuple(float(v) for v in grid["direction"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(qa_path, f"has no readable grid (spacing, origin, direction): {exc}") from None
    if len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
        raise InputError(qa_path, "grid must hold 3 spacings, 3 origin values and 9 direction cosines")
    arrays = []
    for suffix, dtype in (("_image.npy", np.int16), ("_lung.npy", np.uint8)):
        path = folder / f"{scan_id}{suffix}"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot be read as .npy ({exc})") from None
        if array.ndim != 3:
            raise InputError(path, f"has shape {array.shape}; a 3D (Z, Y, X) array was expected")
        arrays.append(array.astype(dtype, copy=False))
    hu, lungs = arrays
    if hu.shape != lungs.shape:
        raise InputError(folder / f"{scan_id}_lung.npy", f"has shape {lungs.shape}, the image {hu.shape}")
    volume = CTVolume(hu=hu, spacing=spacing, origin=origin, direction=direction,  # type: ignore[arg-type]
                      source=str(folder), description=f"preprocessed {scan_id}")
    return volume, lungs
