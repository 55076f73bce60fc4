"""DICOM series reading with pydicom: grouping, geometry checks and HU rescale.

pydicom (with pylibjpeg for JPEG 2000 and JPEG-LS) decodes the pixels, so compressed series read
without GDCM. Geometry comes from ImagePositionPatient / ImageOrientationPatient: slices are sorted
along the slice normal and the gaps between them are checked, which is how a truncated series
(missing files) is caught before it silently becomes a distorted volume.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.sniff import has_dicom_preamble
from drasclr_monailabel.io.volume import CTVolume

# Relative deviation of one slice gap from the median gap that is still accepted as even spacing.
GAP_TOLERANCE = 0.1


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    series_uid: str
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row then column direction cosines


def read_dicom_series(folder: Path) -> CTVolume:
    """Read the single DICOM series in ``folder`` (searched recursively) into HU.

    Raises:
        InputError: no DICOM files, several series, not CT, a single slice, missing or duplicate
            slices, uneven spacing, or undecodable pixel data.
    """
    headers, first = _scan_headers(folder)
    slices = _sorted_slices(folder, headers)
    return _stack(folder, slices, first)


def read_single_dicom(path: Path) -> CTVolume:
    """Read one DICOM file: a classic single-slice CT is 2D and refused."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"cannot be read as DICOM ({exc})") from None
    _check_modality(path, ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames <= 1:
        raise InputError(path, "is a single 2D DICOM slice; point to the folder that holds the whole series")
    raise InputError(path, f"is an enhanced multi-frame DICOM ({frames} frames), which is not supported; export it as classic single-frame slices")


def _scan_headers(folder: Path) -> tuple[list[_SliceHeader], pydicom.Dataset]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    by_series: dict[str, list[_SliceHeader]] = defaultdict(list)
    descriptions: dict[str, str] = {}
    first_of_series: dict[str, pydicom.Dataset] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if has_dicom_preamble(path):
                raise InputError(path, "is a corrupt DICOM file (header cannot be parsed)") from None
            continue
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise InputError(path, f"is a corrupt or truncated DICOM file ({exc})") from None
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "unknown"))
        if uid not in first_of_series:
            first_of_series[uid] = ds
            descriptions[uid] = str(getattr(ds, "SeriesDescription", "") or "")
        by_series[uid].append(_header(path, uid, ds))
    if not by_series:
        raise InputError(folder, f"holds no DICOM image files ({len(files)} other files)" if files else "is an empty folder (no DICOM files)")
    if len(by_series) > 1:
        listed = ", ".join(f"'{descriptions[u] or u[-12:]}' ({len(h)} files)" for u, h in by_series.items())
        raise InputError(folder, f"holds {len(by_series)} DICOM series ({listed}); point to one series folder")
    uid, headers = next(iter(by_series.items()))
    first = first_of_series[uid]
    _check_modality(folder, first)
    return headers, first


def _header(path: Path, uid: str, ds: pydicom.Dataset) -> _SliceHeader:
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise InputError(path, "is an enhanced multi-frame DICOM, which is not supported; export classic single-frame slices")
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except AttributeError:
        raise InputError(path, "lacks ImagePositionPatient/ImageOrientationPatient, so slice geometry is unknown") from None
    return _SliceHeader(path=path, series_uid=uid, position=position, orientation=orientation)


def _check_modality(path: Path, ds: pydicom.Dataset) -> None:
    modality = str(getattr(ds, "Modality", "") or "")
    if modality and modality != "CT":
        raise InputError(path, f"modality is {modality}, not CT")


def _sorted_slices(folder: Path, headers: list[_SliceHeader]) -> list[_SliceHeader]:
    if len(headers) == 1:
        raise InputError(folder, "holds a single 2D DICOM slice; a 3D CT series is needed")
    orientation = headers[0].orientation
    if any(not np.allclose(h.orientation, orientation, atol=1e-3) for h in headers):
        raise InputError(folder, "slices have different ImageOrientationPatient (mixed acquisitions)")
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([float(h.position @ normal) for h in headers])
    order = np.argsort(along)
    along = along[order]
    gaps = np.diff(along)
    duplicate = np.flatnonzero(gaps < 1e-3)
    if duplicate.size:
        raise InputError(folder, f"has {duplicate.size + 1} slices at the same position {along[duplicate[0]]:.2f} mm (duplicate or mixed acquisitions)")
    median = float(np.median(gaps))
    missing = np.flatnonzero(gaps > median * (1 + GAP_TOLERANCE) + 0.01)
    if missing.size:
        i = int(missing[0])
        count = int(round(gaps[i] / median)) - 1
        raise InputError(
            folder,
            f"series is truncated: {max(count, 1)} slice(s) missing between {along[i]:.2f} and {along[i + 1]:.2f} mm "
            f"along the slice axis ({missing.size} gap(s) in total)",
        )
    if np.any(np.abs(gaps - median) > median * GAP_TOLERANCE + 0.01):
        raise InputError(folder, f"slice spacing is uneven ({gaps.min():.2f} to {gaps.max():.2f} mm)")
    return [headers[i] for i in order]


def _stack(folder: Path, slices: list[_SliceHeader], first: pydicom.Dataset) -> CTVolume:
    planes = []
    for header in slices:
        try:
            ds = pydicom.dcmread(header.path)
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for truncated or undecodable data
            raise InputError(header.path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
        if pixels.ndim != 2:
            raise InputError(header.path, f"pixel data has shape {pixels.shape}; one grey-level slice was expected")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes.append(pixels.astype(np.float32) * slope + intercept)
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise InputError(folder, f"slices have different sizes {sorted(shapes)}")
    hu = np.clip(np.rint(np.stack(planes)), -32768, 32767).astype(np.int16)
    row, col = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row, col)
    gap = float(np.median(np.diff([s.position @ normal for s in slices])))
    pixel_spacing = [float(v) for v in getattr(first, "PixelSpacing", [1.0, 1.0])]
    direction = np.stack([row, col, normal], axis=1)  # columns are the image axes in LPS
    return CTVolume(
        hu=hu,
        spacing=(pixel_spacing[1], pixel_spacing[0], gap),
        origin=tuple(float(v) for v in slices[0].position),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        source=str(folder),
        description=str(getattr(first, "SeriesDescription", "") or folder.name),
        modality=str(getattr(first, "Modality", "CT") or "CT"),
        metadata={
            "transfer_syntax": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")),
            "series_instance_uid": str(getattr(first, "SeriesInstanceUID", "")),
            "study_instance_uid": str(getattr(first, "StudyInstanceUID", "")),
            "patient_id": str(getattr(first, "PatientID", "")),
        },
    )
