"""Put a CT volume into a PACS: a classic DICOM CT series, stored with STOW-RS.

The series is written by :func:`~drasclr_monailabel.io.dicom_writer.write_dicom_series` (proper
UIDs, geometry, HU rescale) into a temporary folder and sent in batches, so a big scan never has
to fit into one HTTP request. STOW-RS is standard DICOMweb: the same call works with Orthanc,
dcm4chee or a cloud DICOM store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicomweb_client import DICOMwebClient
from tqdm import tqdm

from drasclr_monailabel.io.dicom_writer import Compression, SeriesIdentity, write_dicom_series
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.pacs.connection import PacsConnection, PacsError, pacs_errors

BATCH_INSTANCES = 16
"""Instances per STOW-RS request (a 512 x 512 slice is about 0.5 MB)."""

FAILED_SOP_SEQUENCE = 0x00081198
"""FailedSOPSequence of a STOW-RS answer: instances the server refused."""


@dataclass(frozen=True)
class StoredSeries:
    """What a PACS now holds: the identifiers a viewer or MONAI Label needs."""

    study_instance_uid: str
    series_instance_uid: str
    instances: int


def upload_volume(volume: CTVolume, client: DICOMwebClient, connection: PacsConnection,
                  identity: SeriesIdentity | None = None, compression: Compression = "none",
                  progress: bool = False) -> StoredSeries:
    """Write ``volume`` as a DICOM CT series and store it; returns its UIDs.

    Raises:
        PacsError: the server refused an instance or could not be reached.
    """
    identity = identity or SeriesIdentity()
    with tempfile.TemporaryDirectory(prefix="drasclr-stow-") as folder:
        paths = write_dicom_series(volume, folder, identity, compression)
        store_files(paths, client, connection, progress)
    return StoredSeries(identity.study_instance_uid, identity.series_instance_uid, len(paths))


def store_files(paths: Sequence[Path], client: DICOMwebClient, connection: PacsConnection, progress: bool = False) -> None:
    """Store DICOM files with STOW-RS, :data:`BATCH_INSTANCES` per request."""
    with tqdm(total=len(paths), unit="slice", desc="STOW-RS", disable=not progress) as bar:
        for start in range(0, len(paths), BATCH_INSTANCES):
            batch = [pydicom.dcmread(p) for p in paths[start:start + BATCH_INSTANCES]]
            store_datasets(batch, client, connection)
            bar.update(len(batch))


def store_datasets(datasets: Sequence[pydicom.Dataset], client: DICOMwebClient, connection: PacsConnection) -> None:
    """Store datasets in one STOW-RS request; a refusal of any instance is an error."""
    with pacs_errors(connection, "storing instances (STOW-RS)"):
        answer = client.store_instances(list(datasets))
    failed = answer.get(FAILED_SOP_SEQUENCE)
    if failed is not None and len(failed.value):
        raise PacsError(connection.url, f"the server refused {len(failed.value)} of {len(datasets)} instances (STOW-RS)")
