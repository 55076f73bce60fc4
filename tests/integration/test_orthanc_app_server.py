"""``monailabel start_server --studies http://.../dicom-web`` with the emphysema app on a real Orthanc.

Offline (every internet request goes to a dead proxy), with Orthanc's authentication on and the
credentials in MONAI Label's settings: one annotation round on a DICOM study ends with the label
as a DICOM SEG in Orthanc, the study counted as labelled, and a training round (MONAI Label's
background subprocess, which builds its own datastore) trained on that SEG. (Inference with the
trained model takes a minute on a CPU and is tested on local studies by the app's own tests.)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from drasclr_monailabel.pacs.connection import open_client
from drasclr_monailabel.pacs.seg import referenced_series_uid
from drasclr_monailabel.pacs.series import find_series, retrieve_instances
from tests.fixtures.app import APP_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_TIMEOUT_S = 420


def nifti_image(data: bytes) -> sitk.Image:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.nii.gz"
        path.write_bytes(data)
        return sitk.ReadImage(str(path))


def nifti_array(data: bytes) -> np.ndarray:
    return sitk.GetArrayFromImage(nifti_image(data))


def wait_for_training(url: str, server) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        task = requests.get(f"{url}/train/", timeout=30).json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(2)
    pytest.fail(f"training did not finish in {TRAIN_TIMEOUT_S} s:\n{server.tail()}")


def test_round_on_a_dicom_study_stores_a_seg_and_trains_from_it(orthanc, stored_phantom, pacs_app_server):
    server = pacs_app_server(orthanc)
    assert server.wait_ready(), server.tail()
    url = server.url
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert info["datastore"]["total"] == 1 and info["datastore"]["completed"] == 0
    assert not (APP_DIR / "bin" / "itkimage2segimage").exists()
    assert "dcmqi" not in server.log.read_text(errors="replace")

    # OHIF's way to the PACS: MONAI Label's proxy with the same credentials.
    studies = requests.get(f"{url}/proxy/dicom/qido/studies", timeout=30)
    assert studies.status_code == 200 and stored_phantom.study_instance_uid in studies.text

    image_id = requests.post(f"{url}/activelearning/first", json={}, timeout=120).json()["id"]
    assert image_id == stored_phantom.series_instance_uid
    inferred = requests.post(f"{url}/infer/emphysema_laa?image={image_id}&output=image", timeout=300)
    assert inferred.status_code == 200, inferred.text
    label = nifti_array(inferred.content)
    assert label.any()

    image = nifti_image(requests.get(f"{url}/datastore/image?image={image_id}", timeout=120).content)
    corrected = label.copy()
    corrected[image.GetSize()[2] // 2, 10:20, 10:20] = 1
    saved = requests.put(f"{url}/datastore/label?image={image_id}&tag=final", timeout=120,
                         files={"label": ("label.nii.gz", _on_grid(corrected, image))},
                         data={"params": json.dumps({"label_info": [{"name": "emphysema", "idx": 1}]})})
    assert saved.status_code == 200, saved.text

    connection = orthanc.connection()
    client = open_client(connection)
    [seg_series] = find_series(client, connection, {"Modality": "SEG"})
    assert referenced_series_uid(retrieve_instances(client, connection, seg_series)[0]) == image_id
    assert requests.get(f"{url}/datastore/?output=stats", timeout=30).json()["completed"] == 1
    unlabelled = requests.post(f"{url}/activelearning/first", json={}, timeout=60)
    assert unlabelled.status_code in (200, 404) and unlabelled.json().get("id") != image_id

    started = requests.post(f"{url}/train/emphysema", json={}, timeout=60)
    assert started.status_code == 200, started.text
    finished = wait_for_training(url, server)
    assert finished["status"] == "DONE", f"{finished}\n{server.tail()}"
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "emphysema" in info["models"]
    assert info["train_stats"]["emphysema"]["cases"] == 1 and info["train_stats"]["emphysema"]["skipped"] == {}

def test_wrong_password_stops_the_server_with_a_clear_line(orthanc, stored_phantom, pacs_app_server):
    server = pacs_app_server(orthanc, password="not-the-password")
    start = time.monotonic()
    assert not server.wait_ready(timeout_s=180), "the server must not start with a wrong password"
    assert time.monotonic() - start < 180
    assert server.process.returncode != 0
    log = server.log.read_text(errors="replace")
    assert f"emphysema app cannot start: {orthanc.dicomweb_url}: searching for studies: authentication failed" in log
    assert "not-the-password" not in log


def _on_grid(array: np.ndarray, image: sitk.Image) -> bytes:
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(image)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "label.nii.gz"
        sitk.WriteImage(label, str(path))
        return path.read_bytes()
