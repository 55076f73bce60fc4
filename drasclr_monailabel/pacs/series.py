"""Find series in a PACS (QIDO-RS), fetch their headers or their pixels (WADO-RS), read them as CT.

Only standard DICOMweb is used, so any PACS with DICOMweb works, not only Orthanc.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from dicomweb_client import DICOMwebClient

from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.pacs.connection import PacsConnection, PacsError, pacs_errors


@dataclass(frozen=True)
class SeriesInfo:
    """One series as QIDO-RS lists it."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    description: str = ""
    patient_id: str = ""
    study_date: str = ""

    @classmethod
    def from_qido(cls, answer: dict[str, Any]) -> SeriesInfo:
        ds = from_dicom_json(answer)
        return cls(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")), str(ds.get("Modality", "")),
                   str(ds.get("SeriesDescription", "") or ""), str(ds.get("PatientID", "") or ""), str(ds.get("StudyDate", "") or ""))


def from_dicom_json(answer: dict[str, Any]) -> pydicom.Dataset:
    """A DICOM JSON object as a dataset; bulk data (pixels) is left empty, never fetched."""
    return pydicom.Dataset.from_json(answer, bulk_data_uri_handler=lambda *_: b"")


def find_series(client: DICOMwebClient, connection: PacsConnection, filters: dict[str, Any]) -> list[SeriesInfo]:
    """Every series matching ``filters`` (e.g. ``{"Modality": "CT"}``), all result pages."""
    with pacs_errors(connection, "searching for series"):
        answers = client.search_for_series(search_filters=dict(filters), get_remaining=True)
    return [SeriesInfo.from_qido(a) for a in answers]


def series_info(client: DICOMwebClient, connection: PacsConnection, series_uid: str) -> SeriesInfo:
    """The series with this UID.

    Raises:
        PacsError: the PACS has no such series.
    """
    found = [s for s in find_series(client, connection, {"SeriesInstanceUID": series_uid}) if s.series_instance_uid == series_uid]
    if not found:
        raise PacsError(connection.url, f"has no series {series_uid}")
    return found[0]


def series_metadata(client: DICOMwebClient, connection: PacsConnection, series: SeriesInfo) -> list[pydicom.Dataset]:
    """The headers of every instance of ``series`` (WADO-RS metadata, no pixel data)."""
    with pacs_errors(connection, f"reading the headers of series {series.series_instance_uid}"):
        answers = client.retrieve_series_metadata(series.study_instance_uid, series.series_instance_uid)
    return [from_dicom_json(a) for a in answers]


AS_STORED = (("application/dicom", "*"),)
"""WADO-RS media type "any transfer syntax": the PACS sends what it stores. Without it Orthanc
must transcode to uncompressed, which it cannot do for JPEG 2000 (HTTP 500); pydicom decodes it."""


def retrieve_instances(client: DICOMwebClient, connection: PacsConnection, series: SeriesInfo) -> list[pydicom.Dataset]:
    """Every instance of ``series`` with its pixel data (WADO-RS), in the transfer syntax it is stored in."""
    with pacs_errors(connection, f"downloading series {series.series_instance_uid}"):
        return list(client.retrieve_series(series.study_instance_uid, series.series_instance_uid, media_types=AS_STORED))


def download_series(client: DICOMwebClient, connection: PacsConnection, series: SeriesInfo, folder: str | Path) -> Path:
    """Save every instance of ``series`` into ``folder`` (which must not exist yet).

    The files are written into a temporary sibling folder that is renamed at the end, so
    ``folder`` either holds the whole series or does not exist.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
    try:
        for index, instance in enumerate(retrieve_instances(client, connection, series)):
            instance.save_as(staging / f"{index:05d}.dcm", write_like_original=False)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_series(client: DICOMwebClient, connection: PacsConnection, series: SeriesInfo) -> CTVolume:
    """Download ``series`` into a temporary folder and read it as a validated CT.

    Raises:
        PacsError: the download failed.
        InputError: the series is not a usable CT (see :func:`~drasclr_monailabel.io.readers.read_ct`).
    """
    with tempfile.TemporaryDirectory(prefix="drasclr-wado-") as tmp:
        return read_ct(download_series(client, connection, series, Path(tmp) / "series"))
