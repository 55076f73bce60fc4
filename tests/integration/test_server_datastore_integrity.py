"""Issue 17's datastore findings, replayed against the emphysema app in-process (MONAI Label's
FastAPI app, as 3D Slicer reaches it): truncated NIfTI labels, client-set revisions, a failed
index write, a lung mask saved as ground truth, label values outside the served label set,
unbounded image info, orphaned temporary files and file modes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.tasks.datastore import ORPHAN_MIN_AGE_S
from drasclr_monailabel.utils.atomic import FILE_MODE
from tests.fixtures.app import FAST_CONF, in_process_app
from tests.integration.test_app_inprocess import label_bytes, read_bytes, save_label
from tests.unit.test_datastore_integrity import fail_on_index

pytestmark = pytest.mark.integration

CONF = {**FAST_CONF, "pretrained": "none", "models": "lung,emphysema_laa"}


@pytest.fixture
def client(phantom_studies):
    with in_process_app(phantom_studies, CONF) as test_client:
        yield test_client


def uploads(studies: Path, image_id: str, count: int, value: int = 1) -> list[bytes]:
    """``count`` different label files for ``image_id`` (values 0 and ``value``)."""
    image = sitk.ReadImage(str(studies / f"{image_id}.nii.gz"))
    shape = sitk.GetArrayFromImage(image).shape
    labels = []
    for i in range(count):
        array = np.zeros(shape, np.uint8)
        array[2 + i : 8 + i, 20:40, 20:40] = value
        labels.append(label_bytes(array, image))
    return labels


def kept_versions(studies: Path, image_id: str) -> list[bytes]:
    """Voxels of every stored version of a final label: history first, then the current one."""
    history = sorted((studies / ".drasclr" / "label_history" / "final" / image_id).glob("*.nii.gz"),
                     key=lambda p: int(p.name.split(".")[0]))
    current = studies / "labels" / "final" / f"{image_id}.nii.gz"
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).tobytes() for p in [*history, current]]


def files_of(studies: Path) -> dict[str, bytes]:
    return {str(p.relative_to(studies)): p.read_bytes() for p in sorted(studies.rglob("*"))
            if p.is_file() and p.name != ".lock" and "cache" not in p.parts}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_label_upload_is_refused(client, phantom_studies, suffix):
    image = sitk.ReadImage(str(phantom_studies / "case_a.nii.gz"))
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) < -950).astype(np.uint8))
    label.CopyInformation(image)
    whole = phantom_studies.parent / f"label{suffix}"
    sitk.WriteImage(label, str(whole), useCompression=suffix.endswith(".gz"))
    before = files_of(phantom_studies)
    data = whole.read_bytes()
    answer = client.put("/datastore/label?image=case_a&tag=final",
                        files={"label": (f"label{suffix}", data[: len(data) * 2 // 3])})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "case_a" in detail and "truncated" in detail and "\n" not in detail
    assert files_of(phantom_studies) == before


def test_label_info_cannot_set_revision_and_history_is_never_overwritten(client, phantom_studies):
    sent = uploads(phantom_studies, "case_b", 4)
    for data in sent[:2]:
        assert save_label(client, "case_b", data).status_code == 200
    for bad in ({"revision": "abc"}, {"revision": 5}, {"revision": 1}, {"voxels": {}}):
        answer = client.put("/datastore/label/info?label=case_b&tag=final", data={"info": json.dumps(bad)})
        assert answer.status_code == 422 and "set by the server" in answer.json()["detail"], (bad, answer.text)
    answer = client.put("/datastore/label/info?label=case_b&tag=final", data={"info": json.dumps({"comment": "checked"})})
    assert answer.status_code == 200, answer.text
    for data in sent[2:]:
        assert save_label(client, "case_b", data).status_code == 200
    info = client.get("/datastore/label/info?label=case_b&tag=final").json()
    assert info["revision"] == 4
    assert kept_versions(phantom_studies, "case_b") == [read_bytes(d).tobytes() for d in sent]


@pytest.mark.parametrize("function", ["fsync", "replace"])
def test_failed_index_write_keeps_label_index_and_history(client, phantom_studies, monkeypatch, function):
    sent = uploads(phantom_studies, "case_c", 3)
    for data in sent[:2]:
        assert save_label(client, "case_c", data).status_code == 200
    before = files_of(phantom_studies)
    with monkeypatch.context() as patch:
        fail_on_index(patch, function, phantom_studies / "datastore_v2.json")
        answer = save_label(client, "case_c", sent[2])
    assert answer.status_code == 507 and "nothing changed" in answer.json()["detail"], answer.text
    assert files_of(phantom_studies) == before
    assert save_label(client, "case_c", sent[2]).status_code == 200
    assert client.get("/datastore/label/info?label=case_c&tag=final").json()["revision"] == 3
    assert kept_versions(phantom_studies, "case_c") == [read_bytes(d).tobytes() for d in sent]


def test_lung_mask_and_foreign_label_values_never_become_final(client, phantom_studies):
    params = {"save_label": True, "label_tag": "final"}
    answer = client.post("/infer/lung?image=case_a", data={"params": json.dumps(params)})
    assert answer.status_code == 400 and "not an emphysema label" in answer.json()["detail"], answer.text
    answer = save_label(client, "case_a", uploads(phantom_studies, "case_a", 1, value=2)[0])
    assert answer.status_code == 422 and "0..1" in answer.json()["detail"], answer.text
    assert not (phantom_studies / "labels" / "final" / "case_a.nii.gz").exists()
    answer = client.post("/infer/emphysema_laa?image=case_a", data={"params": json.dumps(params)})
    assert answer.status_code == 200, answer.text  # an emphysema label may be saved, as the client asked
    assert client.get("/datastore/label/info?label=case_a&tag=final").json()["revision"] == 1


def test_image_info_cannot_grow_without_limit(client, phantom_studies):
    for i in range(4):
        answer = client.put("/datastore/image/info?image=case_a", data={"info": json.dumps({f"note{i}": "x" * 1_000_000})})
        assert answer.status_code == 413, answer.text
    assert client.put("/datastore/image/info?image=case_a", data={"info": json.dumps({"note": "ok"})}).status_code == 200
    assert client.get("/datastore/image/info?image=case_a").json()["note"] == "ok"
    assert (phantom_studies / "datastore_v2.json").stat().st_size < 100_000


def test_start_removes_orphaned_temporary_files_and_labels_keep_one_mode(phantom_studies):
    orphans = [phantom_studies / ".tmp-index.json", phantom_studies / "labels" / "final" / ".tmp-label.nii.gz",
               phantom_studies / ".drasclr" / "label_history" / "final" / "case_a" / ".tmp-1.nii.gz"]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"half-written")
        os.utime(orphan, (time.time() - ORPHAN_MIN_AGE_S - 1,) * 2)  # the server was killed a while ago
    with in_process_app(phantom_studies, CONF) as client:
        assert not any(p.exists() for p in orphans)
        for data in uploads(phantom_studies, "case_a", 2):
            assert save_label(client, "case_a", data).status_code == 200
    label = phantom_studies / "labels" / "final" / "case_a.nii.gz"
    history = phantom_studies / ".drasclr" / "label_history" / "final" / "case_a" / "1.nii.gz"
    assert label.stat().st_mode & 0o777 == history.stat().st_mode & 0o777 == FILE_MODE
