"""The emphysema app in-process (FastAPI TestClient on MONAI Label's app), driven as 3D Slicer drives it.

One full annotation round: info -> next sample -> pre-segmentation -> submit the corrected label
-> train (run_sync) -> scoring -> next sample gives another scan; then every kind of bad request
gets a 4xx with a one-line reason and changes nothing, and concurrent label saves lose nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.tasks.in_process import image_bytes, infer_all, label_bytes, read_bytes, save_label
from tests.fixtures.app import FAST_CONF, in_process_app

pytestmark = pytest.mark.integration


@pytest.fixture
def client(phantom_studies, tiny_encoder):
    conf = {**FAST_CONF, "pretrained": str(tiny_encoder), "auto_update_scoring": "false"}
    with in_process_app(phantom_studies, conf) as test_client:
        yield test_client


@pytest.mark.slow
def test_full_annotation_round_as_slicer_does_it(client, phantom_studies):
    info = client.get("/info/").json()
    assert set(info["models"]) == {"lung", "emphysema_laa"}  # emphysema appears once trained
    assert set(info["trainers"]) == {"emphysema"}
    assert {"random", "first", "epistemic", "diversity", "hybrid"} <= set(info["strategies"])
    assert list(info["labels"]) == ["emphysema"]

    embedded = client.post("/scoring/embedding?run_sync=true").json()
    assert embedded["computed"] == 3 and embedded["failed"] == 0
    store = phantom_studies / ".drasclr" / "cache" / "scans"
    prepared = {qa.parent.name: qa.read_text() for qa in store.glob("*/*_qa.json")}
    assert len(prepared) == 3  # the embeddings prepared every scan into the scan store

    first = client.post("/activelearning/diversity", json={}).json()
    image_id = first["id"]
    assert first["selection"]["strategy"] == "diversity" and "fallback" not in first["selection"]

    params, laa = infer_all(client, "emphysema_laa", image_id)
    assert params["label_names"] == {"emphysema": 1}
    whole = params["quantification"]["regions"]["whole"]
    assert whole["volume_l"] > 0.5 and whole["densitometry"]["laa950_percent"] > 0
    image = sitk.ReadImage(str(phantom_studies / f"{image_id}.nii.gz"))
    assert laa.shape == sitk.GetArrayFromImage(image).shape and laa.max() == 1

    corrected = laa.copy()
    corrected[:, :, : corrected.shape[2] // 4] = 0  # the annotator erases a false positive region
    saved = save_label(client, image_id, label_bytes(corrected, image))
    assert saved.status_code == 200, saved.text
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_studies / "labels" / "final" / f"{image_id}.nii.gz")))
    assert np.array_equal(stored, corrected)

    stats = client.post("/train/emphysema?run_sync=true", json={}).json()
    assert stats["round"] == 1 and stats["cases"] == 1 and stats["pretrained"] is True
    chosen = stats["threshold"]  # the default: chosen on the labelled scan's windows
    assert chosen["chosen_on_labelled"] is True and chosen["windows"] >= 1
    assert min(chosen["changed_voxels"].values()) == chosen["changed_voxels"][f"{chosen['threshold']:.2f}"]
    info = client.get("/info/").json()
    assert "emphysema" in info["models"] and info["train_stats"]["emphysema"]["round"] == 1

    params, predicted = infer_all(client, "emphysema", image_id)
    assert predicted.shape == corrected.shape
    assert params["model"]["round"] == 1 and "quantification" in params
    assert params["model"]["threshold"] == chosen["threshold"]  # infer cuts where training chose

    scores = client.post("/scoring/epistemic?run_sync=true").json()
    assert scores["scored"] == 2 and scores["failed"] == 0
    for strategy in ("epistemic", "hybrid", "diversity"):
        answer = client.post(f"/activelearning/{strategy}", json={}).json()
        assert answer["id"] != image_id, strategy
        assert "fallback" not in answer["selection"], answer
    again = client.post("/scoring/epistemic?run_sync=true").json()
    assert again["scored"] == 0 and again["skipped"] == 2  # same model, same scans: nothing to redo
    # training, infer and epistemic scoring read every scan from the store: none was prepared again
    assert {qa.parent.name: qa.read_text() for qa in store.glob("*/*_qa.json")} == prepared


def test_real_sample_ct_gets_lung_mask_and_quantification(sample_lung1, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(sample_lung1, studies / "lung1.nrrd")
    with in_process_app(studies, {**FAST_CONF, "pretrained": "none", "models": "lung,emphysema_laa"}) as client:
        params, lungs = infer_all(client, "lung", "lung1")
        assert set(np.unique(lungs)) == {0, 1, 2}
        regions = params["quantification"]["regions"]
        assert regions["right"]["volume_l"] > 0.2 and regions["left"]["volume_l"] > 0.2
        assert params["quantification"]["coverage"]["apex_cut"] or params["quantification"]["coverage"]["base_cut"]


def test_bad_requests_get_4xx_and_change_nothing(client, phantom_studies):
    image = sitk.ReadImage(str(phantom_studies / "case_a.nii.gz"))
    shape = sitk.GetArrayFromImage(image).shape
    before = client.get("/datastore/?output=all").json()

    wrong_shape = sitk.GetImageFromArray(np.zeros((shape[0] - 1, *shape[1:]), np.uint8))
    wrong_shape.SetSpacing(image.GetSpacing())
    wrong_shape.SetOrigin(image.GetOrigin())
    shifted = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
    shifted.CopyInformation(image)
    shifted.SetOrigin(tuple(o + 10.0 for o in image.GetOrigin()))
    cases = {
        "shape": (image_bytes(wrong_shape), "has size"),
        "geometry": (image_bytes(shifted), "shifted"),
        "not an image": (b"this is not a label", "not an image file"),
        "values": (label_bytes(np.full(shape, 9), image), "label values"),
    }
    for name, (data, reason) in cases.items():
        response = save_label(client, "case_a", data)
        assert response.status_code == 422, name
        assert reason in response.json()["detail"], (name, response.json())

    checks = [
        (client.post("/infer/liver?image=case_a"), 404, "unknown model 'liver'"),
        (client.post("/infer/lung?image=/etc/passwd"), 404, "not in the datastore"),
        (client.post("/infer/lung?image=../studies/case_a"), 404, "not in the datastore"),
        (client.post("/infer/lung?image=case_a", data={"params": json.dumps({"result_extension": ".png"})}), 400,
         "result_extension '.png'"),
        (client.post("/activelearning/smartest", json={}), 404, "unknown strategy"),
        (client.post("/scoring/magic?run_sync=true"), 404, "unknown scoring method"),
        (client.post("/train/lung?run_sync=true", json={}), 404, "unknown model 'lung'"),
        (client.post("/train/emphysema?run_sync=true", json={"max_epochs": "many"}), 400, "max_epochs"),
        (client.post("/train/emphysema?run_sync=true", json={"learning_rate": 1}), 400, "learning_rate"),
        (client.post("/train/emphysema?run_sync=true", json={}), 409, "no 'final' labels"),
        (client.post("/infer/emphysema?image=case_a"), 404, "no trained weights yet"),
        (save_label(client, "case_a", label_bytes(np.zeros(shape), image), tag="../../outside"), 422, "tag"),
        (save_label(client, "../case_a", label_bytes(np.zeros(shape), image)), 404, "not in the datastore"),
        (client.put("/datastore/image?image=notes", files={"file": ("notes.txt", b"hello")}), 422, "only"),
        (client.put("/datastore/image?image=../escape", files={"file": ("x.nii.gz", b"hello")}), 422, "not allowed"),
        (client.put("/datastore/image?image=fake", files={"file": ("fake.nii.gz", b"hello")}), 422, "upload for image 'fake'"),
    ]
    for response, status, reason in checks:
        assert response.status_code == status, (reason, response.text)
        assert reason in response.json()["detail"], (reason, response.json())

    assert client.get("/datastore/?output=all").json() == before
    assert not (phantom_studies / "labels" / "outside").exists()
    assert not any(p.name.startswith(".tmp-") for p in (phantom_studies / "labels" / "final").iterdir())
    assert sorted(p.name for p in phantom_studies.glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz", "case_c.nii.gz"]


def test_label_comes_back_as_uncompressed_nrrd_when_ohif_asks(client, phantom_studies):
    """OHIF's MONAI Label panel asks for ``.nrrd``, ``uint8``, uncompressed (its NRRD reader needs raw data)."""
    params = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    response = client.post("/infer/lung?image=case_a&output=image", data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    header = response.content[: response.content.index(b"\n\n")].decode()
    assert header.startswith("NRRD") and "encoding: raw" in header and "type: unsigned char" in header
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "label.nrrd"
        path.write_bytes(response.content)
        label = sitk.ReadImage(str(path))
    image = sitk.ReadImage(str(phantom_studies / "case_a.nii.gz"))
    assert label.GetSize() == image.GetSize() and np.allclose(label.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}


def test_concurrent_label_saves_keep_every_version(client, phantom_studies):
    image = sitk.ReadImage(str(phantom_studies / "case_b.nii.gz"))
    shape = sitk.GetArrayFromImage(image).shape
    uploads = []
    for i in range(4):
        array = np.zeros(shape, np.uint8)
        array[5 + i : 10 + i, 40:60, 40:60] = 1
        uploads.append(label_bytes(array, image))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda data: save_label(client, "case_b", data), uploads))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    info = client.get("/datastore/label/info?label=case_b&tag=final").json()
    assert info["revision"] == 4
    history = sorted((phantom_studies / ".drasclr" / "label_history" / "final" / "case_b").glob("*.nii.gz"))
    kept = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).tobytes() for p in history]
    kept.append(sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_studies / "labels" / "final" / "case_b.nii.gz"))).tobytes())
    sent = [read_bytes(data).tobytes() for data in uploads]
    assert sorted(kept) == sorted(sent)


@pytest.mark.slow
def test_a_joint2d3d_encoder_serves_embedding_diversity_and_hybrid_without_registration(phantom_studies, tiny_joint_encoder,
                                                                                      monkeypatch):
    import drasclr_monailabel.anatomy.pipeline as pipeline

    conf = {**FAST_CONF, "pretrained": str(tiny_joint_encoder), "auto_update_scoring": "false"}
    with in_process_app(phantom_studies, conf) as client:
        info = client.get("/info/").json()
        assert {"epistemic", "diversity", "hybrid"} <= set(info["strategies"]) and "embedding" in info["scoring"]
        assert "joint2d3d volume embeddings" in info["strategies"]["diversity"]["description"]

        with monkeypatch.context() as patch:  # the joint2d3d path never registers a scan to the atlas
            patch.setattr(pipeline, "register_to_atlas", lambda *a, **k: pytest.fail("registration was called"))
            embedded = client.post("/scoring/embedding?run_sync=true").json()
            first = client.post("/activelearning/diversity", json={}).json()
        assert embedded["computed"] == 3 and embedded["failed"] == 0
        vectors = sorted((phantom_studies / ".drasclr" / "cache" / "embeddings").glob("*.npy"))
        assert len(vectors) == 3 and all(np.load(v).shape == (16,) for v in vectors)  # the volume embedding (d = 16)
        assert len({np.load(v).tobytes() for v in vectors}) == 3
        assert first["selection"]["strategy"] == "diversity" and "fallback" not in first["selection"]

        image_id = first["id"]
        image = sitk.ReadImage(str(phantom_studies / f"{image_id}.nii.gz"))
        _, laa = infer_all(client, "emphysema_laa", image_id)
        assert save_label(client, image_id, label_bytes(laa, image)).status_code == 200
        stats = client.post("/train/emphysema?run_sync=true", json={}).json()
        assert stats["round"] == 1 and stats["pretrained"] is False  # a 2D slice encoder is no 3D segmentation backbone
        assert client.post("/scoring/epistemic?run_sync=true").json()["scored"] == 2
        for strategy in ("diversity", "hybrid"):
            answer = client.post(f"/activelearning/{strategy}", json={}).json()
            assert answer["id"] != image_id and "fallback" not in answer["selection"], answer
            assert "reason" not in answer["selection"], answer  # hybrid used both uncertainty and diversity


def test_a_segresnet_app_trains_on_one_patch_infers_and_keeps_the_encoder_for_diversity(phantom_studies, tiny_encoder):
    """``--conf network segresnet``: MONAI's SegResNet is the segmentation model (GroupNorm, so one
    patch per step trains: no 400), published and served like the DrasCLR U-Net, epistemic scoring
    samples its dropout, and the DrasCLR encoder still ranks scans for diversity."""
    from drasclr_monailabel.segmentation.checkpoint import load_checkpoint
    from drasclr_monailabel.segmentation.segresnet import MonaiSegResNet

    conf = {**FAST_CONF, "network": "segresnet", "pretrained": str(tiny_encoder), "auto_update_scoring": "false"}
    with in_process_app(phantom_studies, conf) as client:
        info = client.get("/info/").json()
        assert info["drasclr"]["network"] == "segresnet" and info["drasclr"]["pretrained"] == tiny_encoder.name
        assert {"epistemic", "diversity", "hybrid"} <= set(info["strategies"])
        image_id = client.post("/activelearning/diversity", json={}).json()["id"]
        image = sitk.ReadImage(str(phantom_studies / f"{image_id}.nii.gz"))
        _, laa = infer_all(client, "emphysema_laa", image_id)
        assert save_label(client, image_id, label_bytes(laa, image)).status_code == 200

        trained = client.post("/train/emphysema?run_sync=true", json={"batch_size": 1})
        assert trained.status_code == 200, trained.text
        assert trained.json()["round"] == 1 and trained.json()["pretrained"] is False  # the encoder is no SegResNet backbone
        model, meta = load_checkpoint(phantom_studies / ".drasclr" / "model" / "emphysema.pt")
        assert isinstance(model, MonaiSegResNet) and meta["network"] == "segresnet"

        params, predicted = infer_all(client, "emphysema", image_id)
        assert predicted.shape == laa.shape and params["model"]["network"] == "segresnet"
        assert client.post("/scoring/epistemic?run_sync=true").json()["scored"] == 2
        again = client.post("/train/emphysema?run_sync=true", json={}).json()
        assert again["round"] == 2  # continues the published SegResNet
