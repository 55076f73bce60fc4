"""Write a :class:`CTVolume` as a classic single-frame DICOM CT series.

Used to put volumes into a PACS (Orthanc) and to build DICOM test inputs. Each slice is a CT Image
Storage instance with the geometry of the volume (ImagePositionPatient per slice along the third
direction column, ImageOrientationPatient from the first two), unsigned 16-bit pixels with
RescaleIntercept -1024 (so HU below -1024 are clipped), and optionally JPEG 2000 lossless pixel
data encoded with pylibjpeg-openjpeg.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, PYDICOM_IMPLEMENTATION_UID, generate_uid

from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.utils.atomic import write_with

RESCALE_INTERCEPT = -1024
Compression = Literal["none", "jpeg2000"]


@dataclass(frozen=True)
class SeriesIdentity:
    """Patient, study and series identifiers of a written series (UIDs generated when empty)."""

    patient_id: str = "DRASCLR0001"
    patient_name: str = "Anonymous^Drasclr"
    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    study_description: str = "Chest CT"
    series_description: str = "drasclr export"
    series_number: int = 1
    accession_number: str = ""


def write_dicom_series(
    volume: CTVolume,
    folder: str | Path,
    identity: SeriesIdentity | None = None,
    compression: Compression = "none",
) -> list[Path]:
    """Write one file per slice into ``folder`` (``slice_0000.dcm`` ...), each atomically.

    Args:
        volume: the CT; HU are clipped to [-1024, 64511] to fit unsigned 16-bit storage.
        folder: output folder (created).
        identity: UIDs and descriptions; a fresh study/series when omitted.
        compression: "none" (explicit VR little endian) or "jpeg2000" (lossless).

    Returns:
        The written file paths, ordered by slice index (increasing along the third axis).
    """
    identity = identity or SeriesIdentity()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    row_cosine, column_cosine, slice_axis = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.asarray(volume.origin, dtype=np.float64)
    stored = np.clip(volume.hu.astype(np.int32) - RESCALE_INTERCEPT, 0, 65535).astype(np.uint16)
    now = datetime.datetime.now()
    paths = []
    for index in range(stored.shape[0]):
        position = origin + index * volume.spacing[2] * slice_axis
        dataset = _slice_dataset(identity, volume, stored[index], position, row_cosine, column_cosine, index, now, compression)
        path = folder / f"slice_{index:04d}.dcm"
        write_with(path, lambda tmp, ds=dataset: ds.save_as(tmp, write_like_original=False))
        paths.append(path)
    return paths


def _slice_dataset(
    identity: SeriesIdentity,
    volume: CTVolume,
    pixels: np.ndarray,
    position: np.ndarray,
    row_cosine: np.ndarray,
    column_cosine: np.ndarray,
    index: int,
    now: datetime.datetime,
    compression: Compression,
) -> FileDataset:
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = JPEG2000Lossless if compression == "jpeg2000" else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"
    ds.PatientID = identity.patient_id
    ds.PatientName = identity.patient_name
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.StudyDescription = identity.study_description
    ds.SeriesDescription = identity.series_description
    ds.SeriesNumber = identity.series_number
    ds.AccessionNumber = identity.accession_number
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cosine, *column_cosine)]
    ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]
    ds.SliceThickness = f"{volume.spacing[2]:.4f}"
    ds.SliceLocation = f"{float(position[2]):.4f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    if compression == "jpeg2000":
        import openjpeg

        ds.PixelData = pydicom.encaps.encapsulate([openjpeg.encode(pixels, bits_stored=16)])
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "00"
    else:
        ds.PixelData = pixels.tobytes()
    return ds
