"""Client mistakes, refused uploads and destructive requests against the emphysema app in-process.

Each check is one that MONAI Label 0.8.5 alone gets wrong (a 500, a file left in the temporary
folder, an anonymous deletion): the app's checked routes (drasclr_monailabel.tasks.routes) answer
4xx with one line, remove every upload and export, and keep destructive requests off by default.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import SimpleITK as sitk

from tests.fixtures.app import FAST_CONF, free_port, in_process_app
from tests.fixtures.orthanc import require_orthanc
from tests.integration.test_app_inprocess import label_bytes, save_label

pytestmark = pytest.mark.integration

CONF = {**FAST_CONF, "models": "lung,emphysema_laa,emphysema", "pretrained": "none", "auto_update_scoring": "false"}
LONG_NAME = "label." + "x" * 300


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A private temporary folder for the server's uploads and exports (tests run in parallel)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def client(phantom_studies, temp_dir):
    with in_process_app(phantom_studies, CONF) as test_client:
        yield test_client


def zeros_label(studies) -> bytes:
    image = sitk.ReadImage(str(studies / "case_a.nii.gz"))
    return label_bytes(np.zeros(sitk.GetArrayFromImage(image).shape), image)


def assert_refused(response, status: int, reason: str) -> None:
    assert response.status_code == status, (reason, response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and reason in detail and "\n" not in detail, detail


def test_client_mistakes_get_a_4xx_with_one_line(client, phantom_studies, monkeypatch):
    checks = [
        (client.get("/datastore/image?image=case_a%00"), 400, "control characters"),
        (client.post("/infer/lung?image=case_a%00"), 400, "control characters"),
        (client.put("/datastore/label?image=case%00_a", files={"label": ("l.nii.gz", b"x")}), 400, "control characters"),
        (client.post("/infer/lung?image="), 422, "no image given"),
        (client.post("/infer/lung?image=case_a", data={"params": "[1, 2]"}), 400, "'params' must be a JSON object"),
        (client.post("/infer/lung?image=case_a", data={"params": "{not json"}), 400, "'params' is not valid JSON"),
        (save_label_params(client, "[]"), 400, "'params' must be a JSON object"),
        (client.put("/datastore/image/info?image=case_a", data={"info": "[]"}), 400, "'info' must be a JSON object"),
        (client.put("/datastore/label/info?label=case_a&tag=final", data={"info": "3"}), 400, "'info' must be a JSON object"),
        (client.put("/datastore/label?image=case_a", files={"label": (LONG_NAME, zeros_label(phantom_studies))}), 422,
         "suffix too long"),
        (client.put("/datastore/image?image=new", files={"file": (LONG_NAME, b"x")}), 422, "suffix too long"),
        (client.post("/infer/lung", files={"file": (LONG_NAME, b"x")}), 422, "suffix too long"),
    ]
    for response, status, reason in checks:
        assert_refused(response, status, reason)

    import monailabel.utils.async_tasks.task as async_task

    monkeypatch.setattr(async_task, "processes", lambda method: [object()])  # a task is running
    assert_refused(client.post("/train/lung", json={}), 404, "unknown model 'lung'")
    assert_refused(client.post("/scoring/magic", json={}), 404, "unknown scoring method 'magic'")
    assert client.post("/train/emphysema", json={}).status_code == 429  # known model, busy: still 429


def save_label_params(client, params: str):
    return client.put("/datastore/label?image=case_a", files={"label": ("l.nii.gz", b"x")}, data={"params": params})


def test_train_options_are_checked_on_the_async_path(client, monkeypatch):
    import monailabel.utils.async_tasks.task as async_task

    started = []
    monkeypatch.setattr(async_task, "run_background_task", lambda request, method: started.append(request) or {})
    checks = [
        ({"max_epochs": "three"}, "max_epochs"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"batch_size": -1}, "batch_size"),
        ({"max_epochs": 10**12}, "'max_epochs' must be at most"),
        ({"batch_size": 10**6}, "'batch_size' must be at most"),
        ({"patch_size": 4096}, "'patch_size' must be at most"),
    ]
    for options, reason in checks:
        assert_refused(client.post("/train/emphysema", json=options), 400, reason)
    assert not started
    assert client.post("/train/emphysema", json={"max_epochs": 2}).status_code == 200
    assert len(started) == 1 and started[0]["max_epochs"] == 2


def test_uploads_and_exports_leave_no_file_behind(client, phantom_studies, temp_dir, monkeypatch):
    label = zeros_label(phantom_studies)
    image = (phantom_studies / "case_a.nii.gz").read_bytes()
    assert save_label(client, "case_a", b"not an image").status_code == 422
    assert save_label(client, "nope", label).status_code == 404
    assert client.put("/datastore/image?image=case_a", files={"file": ("a.nii.gz", image)}).status_code == 409
    assert client.put("/datastore/image?image=fake", files={"file": ("f.nii.gz", b"hello")}).status_code == 422
    assert client.post("/infer/liver", files={"file": ("a.nii.gz", image)}).status_code == 404
    assert save_label(client, "case_a", label).status_code == 200
    dataset = client.get("/datastore/dataset")
    assert dataset.status_code == 200 and dataset.content[:2] == b"PK"

    from monailabel.interfaces.utils.app import app_instance

    monkeypatch.setattr(type(app_instance().datastore()), "save_label", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        save_label(client, "case_b", label)
    assert sorted(p.name for p in temp_dir.iterdir()) == []


def failing(*args, **kwargs):
    raise RuntimeError("disk full")


def test_destructive_requests_are_off_unless_enabled(phantom_studies, temp_dir):
    conf = {key: value for key, value in CONF.items() if key != "allow_datastore_changes"}
    with in_process_app(phantom_studies, conf) as client:
        assert save_label(client, "case_a", zeros_label(phantom_studies)).status_code == 200
        image = (phantom_studies / "case_b.nii.gz").read_bytes()
        assert_refused(client.delete("/datastore/image?id=case_a"), 403, "allow_datastore_changes")
        assert_refused(client.delete("/datastore/?id=case_a"), 403, "allow_datastore_changes")
        assert_refused(client.delete("/datastore/label?id=case_a&tag=final"), 403, "allow_datastore_changes")
        assert_refused(client.put("/datastore/image?image=copy", files={"file": ("c.nii.gz", image)}), 403,
                       "allow_datastore_changes")
        objects = client.get("/datastore/?output=all").json()["objects"]
        assert "final" in objects["case_a"]["labels"] and "copy" not in objects
        assert (phantom_studies / "case_a.nii.gz").exists() and not list(temp_dir.iterdir())
    with in_process_app(phantom_studies, CONF) as client:
        assert client.delete("/datastore/label?id=case_a&tag=final").status_code == 200
        assert client.delete("/datastore/image?id=case_c").status_code == 200
        assert not (phantom_studies / "case_c.nii.gz").exists()


def test_pacs_orthanc_stops_within_seconds_on_sigterm(tmp_path):
    require_orthanc()
    command = [sys.executable, "-m", "drasclr_monailabel.cli.main", "pacs-orthanc", "--storage", str(tmp_path / "orthanc"),
               "--port", str(free_port()), "--password", "test-password"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "Orthanc is running" in process.stdout.readline(), process.stdout.read()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert time.monotonic() - started < 8
    finally:
        process.kill()
        process.wait()
