"""Read a phenotype table and line it up with the embedding ids.

The table is a CSV with an id column (default ``id``) and one column per phenotype; the synthetic
cohort's ``manifest.csv`` works as it is (``severity``, ``laa950``, ``survival_time``, ``event``,
and the categorical ``subtype``).
Every embedded id must have a row (a table for another cohort, or ids spelled differently, is
refused rather than silently probing a subset); extra rows are ignored. Empty cells are missing
values: those subjects are left out of that target's probe.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from drasclr_monailabel.errors import InputError


def read_phenotype_text(path: str | Path, ids: np.ndarray, columns: list[str], id_column: str = "id") -> dict[str, np.ndarray]:
    """The stripped cells (str, ``""`` where empty) of each of ``columns`` in the order of ``ids``.

    Raises:
        InputError: unreadable CSV, a missing column, or ids without a row.
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
    return {column: np.array([(by_id[str(i)][column] or "").strip() for i in ids], dtype=object) for column in columns}


def is_numeric(cells: np.ndarray) -> bool:
    """True when every non-empty cell reads as a number."""
    try:
        [float(cell) for cell in cells if cell]
    except ValueError:
        return False
    return True


def as_numbers(path: str | Path, column: str, ids: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """float64 (N,) of ``cells``, NaN where empty.

    Raises:
        InputError: a cell that is not a number, named with its id.
    """
    out = np.full(len(cells), np.nan)
    for k, text in enumerate(cells):
        if text:
            try:
                out[k] = float(text)
            except ValueError:
                raise InputError(path, f"column {column!r} holds {text!r} for id {ids[k]!r}, not a number") from None
    return out

