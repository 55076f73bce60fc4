"""Recognise file kinds from their first bytes (no full parse)."""

from __future__ import annotations

from pathlib import Path

DICOM_MAGIC_OFFSET = 128


def has_dicom_preamble(path: str | Path) -> bool:
    """True for a file with the 128-byte preamble and 'DICM' marker of a DICOM Part 10 file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return len(head) == DICOM_MAGIC_OFFSET + 4 and head[DICOM_MAGIC_OFFSET:] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """A regular file named ``*.dcm`` or carrying the DICOM Part 10 marker."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() == ".dcm" or has_dicom_preamble(path))
