"""Read a phenotype table and line it up with the embedding ids.

The table is a CSV with an id column (default ``id``) and one column per phenotype; the synthetic
cohort's ``manifest.csv`` works as it is (``severity``, ``laa950``, ``survival_time``, ``event``).
Every embedded id must have a row (a table for another cohort, or ids spelled differently, is
refused rather than silently probing a subset); extra rows are ignored. Empty cells are missing
values: those subjects are left out of that target's probe.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from drasclr_monailabel.errors import InputError


def read_phenotypes(path: str | Path, ids: np.ndarray, columns: list[str], id_column: str = "id") -> dict[str, np.ndarray]:
    """float64 (N,) values of each of ``columns`` in the order of ``ids`` (NaN where empty).

    Raises:
        InputError: unreadable CSV, a missing column, ids without a row, or a non-numeric value.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({exc})") from None
    header = list(rows[0].keys()) if rows else []
    missing = [c for c in [id_column, *columns] if c not in header]
    if missing:
        raise InputError(path, f"has no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(header) or 'none'})")
    by_id = {(row[id_column] or "").strip(): row for row in rows}
    absent = [str(i) for i in ids if str(i) not in by_id]
    if absent:
        shown = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise InputError(path, f"has no row for {len(absent)} of the {len(ids)} embedded ids ({shown}); "
                               f"column {id_column!r} must hold the same ids as the embeddings")
    values = {}
    for column in columns:
        out = np.full(len(ids), np.nan)
        for k, scan_id in enumerate(ids):
            text = (by_id[str(scan_id)][column] or "").strip()
            if text:
                try:
                    out[k] = float(text)
                except ValueError:
                    raise InputError(path, f"column {column!r} holds {text!r} for id {scan_id!r}, not a number") from None
        values[column] = out
    return values
