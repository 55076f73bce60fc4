"""The PACS building blocks against a real Orthanc: upload, download, DICOM SEG geometry, errors, CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.pacs.connection import PacsConnection, PacsError, open_client
from drasclr_monailabel.pacs.seg import read_seg, referenced_series_uid, slices_in_volume_order, write_seg
from drasclr_monailabel.pacs.series import find_series, read_series, retrieve_instances, series_info, series_metadata
from drasclr_monailabel.pacs.upload import store_datasets, upload_volume
from tests.fixtures.orthanc import ORTHANC_PASSWORD, ORTHANC_USER

pytestmark = pytest.mark.integration


def oblique_volume(volume: CTVolume) -> CTVolume:
    """The phantom with its slices stacked towards the feet (a left-handed grid): DICOM readers sort
    slices along row x column cosines, the other way, so the cached array runs opposite to this one."""
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    return CTVolume(volume.hu, volume.spacing, (10.0, 20.0, 30.0), direction)


def asymmetric_label(shape: tuple[int, int, int]) -> np.ndarray:
    """A label map whose every axis flip or swap differs: a box in one corner and a bar."""
    labels = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    labels[1:z // 3, 2:y // 2, 3:x // 3] = 1
    labels[z // 2, y // 3:y // 3 + 4, :] = 1
    return labels


@pytest.mark.parametrize("compression", ["none", "jpeg2000"])
def test_upload_then_download_gives_the_same_ct(orthanc, pacs_phantom, compression):
    connection = orthanc.connection()
    client = open_client(connection)
    stored = upload_volume(pacs_phantom, client, connection, compression=compression)
    listed = find_series(client, connection, {"Modality": "CT"})
    assert [s.series_instance_uid for s in listed] == [stored.series_instance_uid]
    back = read_series(client, connection, listed[0])
    assert back.hu.shape == pacs_phantom.hu.shape
    assert np.array_equal(back.hu, np.maximum(pacs_phantom.hu, -1024))
    assert np.allclose(back.spacing, pacs_phantom.spacing, atol=1e-4)
    assert np.allclose(back.origin, pacs_phantom.origin, atol=1e-3)
    assert np.allclose(back.direction, pacs_phantom.direction, atol=1e-6)


def test_seg_lies_on_the_source_slices_and_reads_back_in_world_space(orthanc, pacs_phantom):
    connection = orthanc.connection()
    client = open_client(connection)
    volume = oblique_volume(pacs_phantom)
    stored = upload_volume(volume, client, connection)
    series = series_info(client, connection, stored.series_instance_uid)
    cached = read_series(client, connection, series)  # what the datastore caches: slices sorted along the normal
    assert cached.direction[8] == pytest.approx(1.0)
    sources = slices_in_volume_order(series_metadata(client, connection, series))
    labels = asymmetric_label(cached.hu.shape)
    store_datasets([write_seg(labels, sources, ["emphysema"])], client, connection)

    seg_series = find_series(client, connection, {"Modality": "SEG"})
    assert len(seg_series) == 1 and seg_series[0].study_instance_uid == stored.study_instance_uid
    seg = retrieve_instances(client, connection, seg_series[0])[0]
    assert referenced_series_uid(seg) == stored.series_instance_uid
    positions = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in sources}
    frame_slices = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, positions[source_uid], atol=1e-3)
        frame_slices.add(source_uid)
    assert len(frame_slices) == int(np.count_nonzero(labels.any(axis=(1, 2))))

    back = read_seg(seg, [str(ds.SOPInstanceUID) for ds in sources], ["emphysema"])
    assert np.array_equal(back, labels)
    # In world coordinates the label sits where it was drawn on the original (differently ordered) grid.
    label_image = sitk.GetImageFromArray(back)
    label_image.CopyInformation(cached.to_sitk())
    on_original = sitk.Resample(label_image, volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    expected = np.flip(labels, axis=0)
    assert np.array_equal(sitk.GetArrayFromImage(on_original), expected)


def test_seg_with_subtypes_maps_segments_by_name(orthanc, pacs_phantom):
    connection = orthanc.connection()
    client = open_client(connection)
    stored = upload_volume(pacs_phantom, client, connection)
    sources = slices_in_volume_order(series_metadata(client, connection, series_info(client, connection, stored.series_instance_uid)))
    labels = asymmetric_label(pacs_phantom.hu.shape) * 3
    labels[0, :5, :5] = 1
    names = ["centrilobular", "panlobular", "paraseptal"]
    seg = write_seg(labels, sources, names)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    assert np.array_equal(read_seg(seg, uids, names), labels)
    assert np.array_equal(read_seg(seg, uids, ["Paraseptal"]), (labels == 3).astype(np.uint8))
    with pytest.raises(Exception, match="no segment named liver"):
        read_seg(seg, uids, ["liver"])


def test_wrong_password_and_unreachable_server_fail_fast_with_one_line(orthanc):
    start = time.monotonic()
    with pytest.raises(PacsError, match=r"authentication failed \(HTTP 401, user 'annotator'\)"):
        open_client(PacsConnection(orthanc.dicomweb_url, ORTHANC_USER, "wrong"))
    with pytest.raises(PacsError, match="not found \\(HTTP 404\\); the URL must end at the DICOMweb root"):
        open_client(PacsConnection(orthanc.url + "/nothing-here", ORTHANC_USER, ORTHANC_PASSWORD))
    orthanc.stop(graceful=False)
    with pytest.raises(PacsError, match="cannot connect"):
        open_client(PacsConnection(orthanc.dicomweb_url, ORTHANC_USER, ORTHANC_PASSWORD))
    assert time.monotonic() - start < 10


def test_a_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(PacsError, match="no answer within 1 s"):
            open_client(PacsConnection(f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web", timeout_s=1.0))
        assert time.monotonic() - start < 5
    finally:
        for conn, _ in accepted:
            conn.close()
        listener.close()


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(PacsError) as caught:
        PacsConnection("http://user:topsecret@127.0.0.1:8042/dicom-web")
    assert "topsecret" not in str(caught.value) and "not in the URL" in str(caught.value)


def test_pacs_upload_command(orthanc, tmp_path, pacs_phantom):
    scan = tmp_path / "case_07.nii.gz"
    sitk.WriteImage(pacs_phantom.to_sitk(), str(scan))
    env = {**os.environ, "MONAI_LABEL_DICOMWEB_USERNAME": ORTHANC_USER, "MONAI_LABEL_DICOMWEB_PASSWORD": ORTHANC_PASSWORD}
    command = [sys.executable, "-m", "drasclr_monailabel.cli.main", "pacs-upload", str(scan), "--url", orthanc.dicomweb_url]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    series_uid = done.stdout.split(" series ")[1].split()[0]
    connection = orthanc.connection()
    series = series_info(open_client(connection), connection, series_uid)
    assert series.patient_id == "case_07" and series.modality == "CT"
    slices = series_metadata(open_client(connection), connection, series)
    assert len(slices) == pacs_phantom.hu.shape[0] and isinstance(slices[0], pydicom.Dataset)

    refused = subprocess.run(command + ["--password", "wrong"], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication failed" in lines[0] and orthanc.dicomweb_url in lines[0]
