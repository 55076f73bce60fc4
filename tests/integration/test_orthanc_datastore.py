"""The app's DICOMweb datastore against a real Orthanc: listing, labelled status, SEG round trip."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import HTTPException

from drasclr_monailabel.pacs.connection import PacsConnection, PacsError, open_client
from drasclr_monailabel.pacs.seg import referenced_series_uid, slices_in_volume_order, write_seg
from drasclr_monailabel.pacs.series import find_series, retrieve_instances, series_info, series_metadata
from drasclr_monailabel.pacs.upload import store_datasets
from drasclr_monailabel.tasks.dicomweb import SEG_KEY, DicomWebDatastore
from tests.fixtures.orthanc import ORTHANC_USER

pytestmark = pytest.mark.integration

FINAL = "final"


def datastore(orthanc, cache, labels=("emphysema",)) -> DicomWebDatastore:
    return DicomWebDatastore(orthanc.connection(), cache, list(labels))


def label_file(path, image_path, labels: np.ndarray):
    image = sitk.ReadImage(str(image_path))
    label = sitk.GetImageFromArray(labels.astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(path))
    return str(path)


def blob_label(shape) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:6, 10:20, 5:15] = 1
    labels[7, 30:33, 20:40] = 1
    return labels


def test_labelled_status_and_labels_come_from_the_pacs(orthanc, stored_phantom, pacs_phantom, tmp_path):
    store = datastore(orthanc, tmp_path / "cache")
    image_id = stored_phantom.series_instance_uid
    assert store.list_images() == [image_id]
    assert store.get_unlabeled_images() == [image_id] and store.get_labeled_images() == []

    image_path = store.get_image_uri(image_id)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(image_path)), np.maximum(pacs_phantom.hu, -1024))
    labels = blob_label(pacs_phantom.hu.shape)
    store.save_label(image_id, label_file(tmp_path / "label.nii.gz", image_path, labels), FINAL, {"label_info": []})

    assert store.get_labeled_images() == [image_id] and store.get_unlabeled_images() == []
    assert store.status()["completed"] == 1
    connection = orthanc.connection()
    client = open_client(connection)
    segs = find_series(client, connection, {"Modality": "SEG"})
    assert len(segs) == 1 and segs[0].study_instance_uid == stored_phantom.study_instance_uid
    seg = retrieve_instances(client, connection, segs[0])[0]
    assert referenced_series_uid(seg) == image_id
    assert store.get_label_info(image_id, FINAL)[SEG_KEY] == segs[0].series_instance_uid

    # Another process (a training subprocess, a second server) with an empty cache sees the same label.
    other = datastore(orthanc, tmp_path / "other-cache")
    assert other.get_labeled_images() == [image_id]
    [pair] = other.datalist()
    assert pair["image"].endswith(f"{image_id}.nii.gz")
    back = sitk.ReadImage(pair["label"])
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    reference = sitk.ReadImage(image_path)
    assert back.GetSize() == reference.GetSize()
    assert np.allclose(back.GetOrigin(), reference.GetOrigin()) and np.allclose(back.GetSpacing(), reference.GetSpacing())
    assert np.allclose(back.GetDirection(), reference.GetDirection())


def test_a_new_revision_wins_and_earlier_ones_are_kept(orthanc, stored_phantom, pacs_phantom, tmp_path):
    store = datastore(orthanc, tmp_path / "cache")
    image_id = stored_phantom.series_instance_uid
    image_path = store.get_image_uri(image_id)
    first = blob_label(pacs_phantom.hu.shape)
    second = np.zeros_like(first)
    second[4:9, 40:50, 40:50] = 1
    store.save_label(image_id, label_file(tmp_path / "a.nii.gz", image_path, first), FINAL, {})
    time.sleep(1.1)  # SEG content times have one-second resolution in some PACS
    store.save_label(image_id, label_file(tmp_path / "b.nii.gz", image_path, second), FINAL, {})

    connection = orthanc.connection()
    assert len(find_series(open_client(connection), connection, {"Modality": "SEG"})) == 2
    assert [p.name for p in store.label_history(image_id, FINAL)] == ["1.nii.gz"]
    fresh = datastore(orthanc, tmp_path / "fresh")
    label = sitk.GetArrayFromImage(sitk.ReadImage(fresh.get_label_uri(image_id, FINAL)))
    assert np.array_equal(label, second)


def test_subtype_labels_round_trip(orthanc, stored_phantom, pacs_phantom, tmp_path):
    names = ("centrilobular", "panlobular", "paraseptal")
    store = datastore(orthanc, tmp_path / "cache", names)
    image_id = stored_phantom.series_instance_uid
    image_path = store.get_image_uri(image_id)
    labels = blob_label(pacs_phantom.hu.shape)
    labels[10:12, 50:60, 50:60] = 2
    labels[12, 60:70, 60:70] = 3
    store.save_label(image_id, label_file(tmp_path / "l.nii.gz", image_path, labels), FINAL, {})
    fresh = datastore(orthanc, tmp_path / "fresh", names)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(fresh.get_label_uri(image_id, FINAL))), labels)


def test_bad_labels_and_foreign_segs_leave_the_image_unlabelled(orthanc, stored_phantom, pacs_phantom, tmp_path):
    store = datastore(orthanc, tmp_path / "cache")
    image_id = stored_phantom.series_instance_uid
    store.get_image_uri(image_id)
    wrong_grid = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    sitk.WriteImage(wrong_grid, str(tmp_path / "wrong.nii.gz"))
    with pytest.raises(HTTPException) as refused:
        store.save_label(image_id, str(tmp_path / "wrong.nii.gz"), FINAL, {})
    assert refused.value.status_code == 422 and "size" in refused.value.detail

    # A SEG of something else (a 'liver' segment) referencing the CT is not an emphysema label.
    connection = orthanc.connection()
    client = open_client(connection)
    sources = slices_in_volume_order(series_metadata(client, connection, series_info(client, connection, image_id)))
    store_datasets([write_seg(blob_label(pacs_phantom.hu.shape), sources, ["liver"])], client, connection)
    fresh = datastore(orthanc, tmp_path / "fresh")
    assert fresh.get_labeled_images() == [] and fresh.datalist() == []
    assert len(find_series(client, connection, {"Modality": "SEG"})) == 1

    with pytest.raises(HTTPException) as unknown:
        store.get_image_uri("1.2.3.4")
    assert unknown.value.status_code == 404
    with pytest.raises(HTTPException) as removal:
        store.remove_label(image_id, FINAL)
    assert removal.value.status_code == 409


def test_wrong_password_stops_the_datastore_at_once(orthanc, tmp_path):
    start = time.monotonic()
    with pytest.raises(PacsError, match="authentication failed"):
        DicomWebDatastore(PacsConnection(orthanc.dicomweb_url, ORTHANC_USER, "wrong"), tmp_path / "cache", ["emphysema"])
    assert time.monotonic() - start < 5



def test_what_a_seg_references_is_read_once_per_cache(orthanc, stored_phantom, pacs_phantom, tmp_path, monkeypatch):
    from drasclr_monailabel.tasks import dicomweb

    store = datastore(orthanc, tmp_path / "cache")
    image_id = stored_phantom.series_instance_uid
    labels = blob_label(pacs_phantom.hu.shape)
    store.save_label(image_id, label_file(tmp_path / "l.nii.gz", store.get_image_uri(image_id), labels), FINAL, {})
    assert datastore(orthanc, tmp_path / "server").get_labeled_images() == [image_id]

    read = []
    real = dicomweb.series_metadata
    monkeypatch.setattr(dicomweb, "series_metadata", lambda client, connection, series: read.append(series.modality)
                        or real(client, connection, series))
    assert datastore(orthanc, tmp_path / "server").get_labeled_images() == [image_id]
    assert "SEG" not in read
    (tmp_path / "server" / dicomweb.SEG_INDEX).write_text("{not json")
    assert datastore(orthanc, tmp_path / "server").get_labeled_images() == [image_id]
    assert read.count("SEG") == 1
