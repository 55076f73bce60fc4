"""A real ``monailabel start_server`` with the emphysema app, driven over HTTP, then restarted.

The round is the one 3D Slicer runs, with training in MONAI Label's background subprocess (as
Slicer's "Train" and "auto-update model" start it), which needs PYTHONPATH and the app importable.
A second round is stopped midway (what auto-update does when a label is submitted during a
round): the published model must stay intact. After a restart, the label (with its revision), the epistemic scores and the published model
(same checksum) must all still be there.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import SimpleITK as sitk

from drasclr_monailabel.segmentation.checkpoint import load_checkpoint
from drasclr_monailabel.tasks.background import BACKGROUND_METHODS
from tests.fixtures.app import FAST_CONF, AppServer
from tests.integration.test_app_inprocess import label_bytes, read_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 420


@pytest.fixture
def start_server(tmp_path):
    servers: list[AppServer] = []

    def start(studies: Path, conf: dict[str, str]) -> AppServer:
        temp_files = set(Path(tempfile.gettempdir()).glob("tmp*.json"))
        server = AppServer(studies, conf, studies.parent)
        servers.append(server)
        assert server.wait_ready(START_TIMEOUT_S), f"server exited with {server.process.returncode}:\n{server.tail()}"
        # Given --log_config, MONAI Label leaves no filled-in copy of its logging config in the temp folder.
        assert set(Path(tempfile.gettempdir()).glob("tmp*.json")) <= temp_files
        return server

    yield start
    for server in servers:
        server.stop()


def wait_for_training(server: AppServer) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        task = server.get("/train/").json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(2)
    pytest.fail(f"training did not finish in {TRAIN_TIMEOUT_S} s:\n{server.tail()}")


def wait_for_log(server: AppServer, text: str) -> None:
    """Wait until the running training task's output shows ``text``."""
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        task = server.get("/train/").json()
        if any(text in line for line in task.get("details", [])):
            return
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            pytest.fail(f"training ended before '{text}': {task}")
        time.sleep(1)
    pytest.fail(f"'{text}' not seen in {TRAIN_TIMEOUT_S} s:\n{server.tail()}")


def thread_nice_values(process: psutil.Process) -> list[int]:
    values = []
    for thread in process.threads():
        try:
            values.append(os.getpriority(os.PRIO_PROCESS, thread.id))
        except ProcessLookupError:
            continue
    return values


def background_task_processes(server: AppServer) -> list[psutil.Process]:
    """The server's MONAI Label task subprocesses (``python -m monailabel.interfaces.utils.app``)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [child for child in children if "monailabel.interfaces.utils.app" in " ".join(child.cmdline())]


def test_round_over_http_survives_a_restart(start_server, phantom_studies, tiny_encoder):
    conf = {**FAST_CONF, "pretrained": str(tiny_encoder), "auto_update_scoring": "false"}
    server = start_server(phantom_studies, conf)
    info = server.get("/info/").json()
    assert set(info["models"]) == {"lung", "emphysema_laa"} and "emphysema" in info["trainers"]

    image_id = server.post("/activelearning/first", json={}).json()["id"]
    response = server.post(f"/infer/emphysema_laa?image={image_id}&output=image")
    assert response.status_code == 200, response.text
    label = read_bytes(response.content)
    image = sitk.ReadImage(str(phantom_studies / f"{image_id}.nii.gz"))
    saved = server.put(f"/datastore/label?image={image_id}&tag=final", files={"label": ("label.nii.gz", label_bytes(label, image))},
                       data={"params": json.dumps({"label_info": [{"name": "emphysema", "idx": 1}]})})
    assert saved.status_code == 200, saved.text

    task = server.post("/train/emphysema", json={})
    assert task.status_code == 200, task.text
    finished = wait_for_training(server)
    assert finished["status"] == "DONE", f"{finished}\n{server.tail()}"
    assert "emphysema" in server.get("/info/").json()["models"]
    model_before = server.get("/model/info/emphysema").json()

    # Slicer's auto-update stops a running round before it starts the next: the model must survive.
    assert server.post("/train/emphysema", json={"max_epochs": 50}).status_code == 200
    wait_for_log(server, "train: round 2")
    # The round yields the cores to annotators' requests (--conf background_nice, default 19), the server does not:
    # only the executor threads that fork MONAI Label's task subprocesses run lowered (so the subprocess starts so).
    background = background_task_processes(server)
    assert background and all(nice == 19 for task in background for nice in thread_nice_values(task))
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = [nice for nice in thread_nice_values(psutil.Process(server.process.pid)) if nice != normal]
    assert os.getpriority(os.PRIO_PROCESS, server.process.pid) == normal
    assert set(lowered) == {19} and len(lowered) <= len(BACKGROUND_METHODS)
    stopped = requests.delete(f"{server.url}/train/", timeout=60).json()
    assert stopped["status"] == "STOPPED"
    assert server.get("/model/info/emphysema").json()["checksum"] == model_before["checksum"]
    model_dir = phantom_studies / ".drasclr" / "model"
    load_checkpoint(model_dir / "emphysema.pt")
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")]

    scores = server.post("/scoring/epistemic?run_sync=true").json()
    assert scores["scored"] == 2, scores
    after = server.post("/activelearning/epistemic", json={}).json()
    assert after["id"] != image_id and "fallback" not in after["selection"]
    objects = server.get("/datastore/?output=all").json()["objects"]
    scores_before = {k: v["image"]["info"]["epistemic"]["score"] for k, v in objects.items() if "epistemic" in v["image"]["info"]}
    server.stop()

    restarted = start_server(phantom_studies, conf)
    assert "emphysema" in restarted.get("/info/").json()["models"]
    assert restarted.get("/model/info/emphysema").json()["checksum"] == model_before["checksum"]
    objects = restarted.get("/datastore/?output=all").json()["objects"]
    assert objects[image_id]["labels"]["final"]["info"]["revision"] == 1
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_studies / "labels" / "final" / f"{image_id}.nii.gz")))
    assert np.array_equal(stored, label)
    assert {k: v["image"]["info"]["epistemic"]["score"] for k, v in objects.items() if "epistemic" in v["image"]["info"]} == scores_before
    again = restarted.post("/activelearning/epistemic", json={}).json()
    assert again["id"] != image_id and "fallback" not in again["selection"]


def test_a_synchronous_training_round_leaves_the_server_answering(start_server, phantom_studies, tiny_encoder):
    """``/train/emphysema?run_sync=true`` trains inside the request; other requests must not wait for it."""
    server = start_server(phantom_studies, {**FAST_CONF, "pretrained": str(tiny_encoder), "auto_update_scoring": "false"})
    image_id = server.post("/activelearning/first", json={}).json()["id"]
    label = read_bytes(server.post(f"/infer/emphysema_laa?image={image_id}&output=image").content)
    image = sitk.ReadImage(str(phantom_studies / f"{image_id}.nii.gz"))
    assert server.put(f"/datastore/label?image={image_id}&tag=final", files={"label": ("label.nii.gz", label_bytes(label, image))}).status_code == 200

    answer: dict[str, requests.Response] = {}
    training = threading.Thread(target=lambda: answer.update(train=server.post("/train/emphysema?run_sync=true",
                                                                               json={"max_epochs": 60})))
    training.start()
    time.sleep(2.0)  # the round is under way (it takes about 20 s)
    started = time.monotonic()
    info = server.get("/info/")
    waited = time.monotonic() - started
    still_training = training.is_alive()
    training.join(TRAIN_TIMEOUT_S)
    assert info.status_code == 200 and still_training, f"/info/ took {waited:.1f} s; training still running: {still_training}; {answer}\n{server.tail()}"
    assert waited < 5.0
    assert answer["train"].status_code == 200, answer["train"].text

