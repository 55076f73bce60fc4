"""Read 2D images (chest radiographs, single CT slices, PNG/JPEG exports) into float arrays.

Every image becomes ``float32 (H, W)`` in ``[0, 1]`` with "brighter = denser" (the MONOCHROME2
sense), so radiographs, CT slices and screenshots share one input range:

* DICOM: the modality LUT is applied (stored values -> e.g. HU); a CT slice is then mapped with
  the lung window used for CT volumes (so a CT slice read here equals the same slice cut from a
  volume); other modalities are scaled by their 0.5 / 99.5 percentiles (VOI windows in
  radiograph headers often span the whole detector range and would waste contrast);
  MONOCHROME1 (bright = air, common for CR/DX) is inverted.
* PNG/JPEG/BMP/TIFF: 8-bit images are divided by 255; 16-bit ones (raw detector values) are
  scaled by their 0.5 / 99.5 percentiles; colour images are converted to luminance.

Bad input (unreadable, multi-frame, blank, tiny) raises :class:`InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.sniff import has_dicom_preamble
from drasclr_monailabel.models.intensity import LUNG_WINDOW

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_2D_SUFFIXES = PLAIN_SUFFIXES + DICOM_SUFFIXES
MIN_SIDE = 16
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Image2D:
    """One 2D image.

    Attributes:
        pixels: float32 (H, W) in [0, 1], brighter = denser.
        source: the file it was read from.
        modality: DICOM Modality (e.g. "CR", "DX", "CT"), "" for plain image files.
        inverted: the file was MONOCHROME1 and has been inverted.
    """

    pixels: np.ndarray
    source: str
    modality: str = ""
    inverted: bool = False


def read_image2d(path: str | Path) -> Image2D:
    """Read a 2D DICOM, PNG, JPEG, BMP or TIFF image (see the module docstring for the scaling).

    Raises:
        InputError: missing or unreadable file, several frames, fewer than 16 pixels a side, or a
            blank image (all pixels equal).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    if path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path):
        image = _read_dicom(path)
    elif path.suffix.lower() in PLAIN_SUFFIXES:
        image = _read_plain(path)
    else:
        raise InputError(path, f"unknown 2D image type '{path.suffix}' (use {', '.join(IMAGE_2D_SUFFIXES)})")
    if min(image.pixels.shape) < MIN_SIDE:
        raise InputError(path, f"is {image.pixels.shape[1]}x{image.pixels.shape[0]} pixels; at least {MIN_SIDE} a side is needed")
    return image


def list_images2d(paths: Iterable[str | Path]) -> list[Path]:
    """The 2D image files named by ``paths``: files as given, folders searched recursively (sorted).

    A folder contributes files with a 2D image suffix and suffix-less files with a DICOM preamble.

    Raises:
        InputError: a path that does not exist, or a folder without any 2D image.
    """
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            inside = sorted(p for p in item.rglob("*") if p.is_file() and _looks_like_image(p))
            if not inside:
                raise InputError(item, f"holds no 2D image ({', '.join(IMAGE_2D_SUFFIXES)} or DICOM files)")
            found.extend(inside)
        else:
            raise InputError(item, "does not exist")
    return found


def _looks_like_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_2D_SUFFIXES or (suffix == "" and has_dicom_preamble(path))


def _read_dicom(path: Path) -> Image2D:
    import pydicom
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise InputError(path, f"cannot be read as DICOM ({exc})") from None
    if "PixelData" not in ds:
        raise InputError(path, "is a DICOM file without pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(path, f"holds {frames} frames; a single 2D image is needed (read volumes with read_ct)")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing decoders or truncated data
        raise InputError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        values = _luminance(stored.astype(np.float64), photometric)
    elif stored.ndim == 2:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    else:
        raise InputError(path, f"pixel data has shape {stored.shape}; a single 2D image is needed")
    _check_not_blank(path, values)
    modality = str(ds.get("Modality", ""))
    if modality == "CT":
        pixels = _rescale(LUNG_WINDOW.clip_hu[0], LUNG_WINDOW.clip_hu[1], values)
    else:
        pixels = _percentile_rescale(path, values)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        pixels = 1.0 - pixels
    return Image2D(pixels=pixels.astype(np.float32), source=str(path), modality=modality, inverted=inverted)


def _read_plain(path: Path) -> Image2D:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as an image ({exc})") from None
    if getattr(image, "n_frames", 1) > 1:
        raise InputError(path, f"holds {image.n_frames} frames; a single 2D image is needed")
    if image.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "PA"):
        values = np.asarray(image.convert("L"), dtype=np.float64)
        _check_not_blank(path, values)
        return Image2D(pixels=(values / 255.0).astype(np.float32), source=str(path))
    values = np.asarray(image, dtype=np.float64)  # I;16, I, F: raw values of any range
    if values.ndim != 2:
        raise InputError(path, f"has image mode {image.mode} with shape {values.shape}; a grey-level 2D image is needed")
    _check_not_blank(path, values)
    return Image2D(pixels=_percentile_rescale(path, values).astype(np.float32), source=str(path))


def _luminance(rgb: np.ndarray, photometric: str) -> np.ndarray:
    """Grey level of RGB pixel data (YBR data is already luminance in its first channel)."""
    if photometric.startswith("YBR"):
        return rgb[..., 0]
    return rgb[..., :3] @ np.array([0.299, 0.587, 0.114])


def _percentile_rescale(path: Path, values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError(path, "is blank (every pixel has the same value)")
    return _rescale(low, high, values)


def _rescale(low: float, high: float, values: np.ndarray) -> np.ndarray:
    """Clip ``values`` to [low, high] and map them linearly onto [0, 1]."""
    return (np.clip(values, low, high) - low) / (high - low)


def _check_not_blank(path: Path, values: np.ndarray) -> None:
    if values.size == 0 or float(values.max()) == float(values.min()):
        raise InputError(path, "is blank (every pixel has the same value)")
