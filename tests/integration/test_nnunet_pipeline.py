"""The nnU-Net bridge end to end on CPU, with nnU-Net's own commands:

export (real lung mask, registration and coordinates; 4 mm grid to stay small) ->
nnUNetv2_plan_and_preprocess -> nnUNetv2_train with the smoke trainer, warm-started from an
exported encoder through DRASCLR_PRETRAINED -> nnUNetv2_predict -> in-process nnUNetPredictor and
the app's nnU-Net infer task. About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.cli.main import main
from tests.fixtures.nnunet import SMALL_ENCODER, export_encoder, write_labelled_cohort

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASET_ID = "503"
DATASET = "Dataset503_Smoke"
TRAINER = "nnUNetTrainerDrasCLR_smoke"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture(scope="module")
def environment(work) -> dict[str, str]:
    """nnU-Net's folders, our trainers' folder, one worker process, a warm-start encoder."""
    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.nnunet.environment import ext_trainer_setting

    encoder, _ = export_encoder(work / "encoder", SMALL_ENCODER, atlas_id=load_default_atlas().atlas_id)
    variables = {name: str(work / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    variables.update({"nnUNet_extTrainer": ext_trainer_setting(), "nnUNet_def_n_proc": "1",
                      "DRASCLR_PRETRAINED": str(encoder), "OMP_NUM_THREADS": "2"})
    return {**os.environ, **variables}


def _run(command: list[str], environment: dict[str, str], **extra: str) -> str:
    result = subprocess.run([str(BIN / command[0]), *command[1:]], env={**environment, **extra},
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def exported(work, environment) -> Path:
    manifest = write_labelled_cohort(work / "cohort", {"a": 10, "b": 14, "c": 8, "d": 18, "e": 12, "new": None})
    code = main(["export-nnunet", "--manifest", str(manifest), "--out", environment["nnUNet_raw"], "--dataset-id",
                 DATASET_ID, "--name", "Smoke", "--coordinates", "--unlabelled", "--spacing", "4", "--no-progress"])
    assert code == 0
    return Path(environment["nnUNet_raw"]) / DATASET


@pytest.fixture(scope="module")
def trained(exported, environment) -> tuple[Path, str]:
    _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "--verify_dataset_integrity", "-c", "3d_fullres",
          "-np", "1", "-npfp", "1"], environment)
    log = _run(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], environment,
               nnUNet_n_proc_DA="0")
    return Path(environment["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres", log


def test_export_is_an_nnunet_dataset_with_coordinates(exported) -> None:
    dataset = json.loads((exported / "dataset.json").read_text())
    assert dataset["numTraining"] == 5 and dataset["drasclr"]["coordinates"] and dataset["drasclr"]["spacing_mm"] == 4
    ct = sitk.ReadImage(str(exported / "imagesTr" / "a_0000.nii.gz"))
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "imagesTr" / "a_0001.nii.gz")))
    label = sitk.ReadImage(str(exported / "labelsTr" / "a.nii.gz"))
    assert ct.GetSpacing() == (4.0, 4.0, 4.0) and label.GetSize() == ct.GetSize() and label.GetOrigin() == ct.GetOrigin()
    assert sitk.GetArrayFromImage(label).max() == 1
    assert -1.5 < x.min() < -0.3 and 0.3 < x.max() < 1.5, "atlas x spans the lungs, about [-1, 1]"
    assert np.all(np.diff(x.mean(axis=(0, 1))) > 0), "atlas x grows towards the patient's left (+x, LPS)"


def test_training_warm_starts_and_leaves_a_predictor_ready_folder(trained) -> None:
    folder, log = trained
    loaded = [line for line in log.splitlines() if "DrasCLR warm start from" in line]
    assert loaded and "reshaped 0, skipped 0" in loaded[0], log[-2000:]
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["architecture"]["network_class_name"].endswith("DrasclrNnunetNetwork")
    assert plans["patch_size"] == [32, 32, 32]
    assert "Mean Validation Dice" in log


def test_nnunet_predict_writes_labels_on_the_input_grid(trained, exported, environment, work) -> None:
    _run(["nnUNetv2_predict", "-i", str(exported / "imagesTs"), "-o", str(work / "predicted"), "-d", DATASET_ID,
          "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], environment)
    source = sitk.ReadImage(str(exported / "imagesTs" / "new_0000.nii.gz"))
    predicted = sitk.ReadImage(str(work / "predicted" / "new.nii.gz"))
    assert predicted.GetSize() == source.GetSize() and predicted.GetOrigin() == source.GetOrigin()
    assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= {0, 1}


def test_app_serves_the_nnunet_model_with_backend_nnunet(trained, work, monkeypatch) -> None:
    """``--conf backend nnunet --conf nnunet_model <folder>``: /info/ and /infer/emphysema through MONAI Label."""
    from tests.fixtures.app import in_process_app
    from tests.integration.test_app_inprocess import infer_all

    folder, _ = trained
    monkeypatch.setenv("nnUNet_extTrainer", "")  # the infer task must find our trainers by itself
    studies = work / "studies"
    studies.mkdir(exist_ok=True)
    image = studies / "new.nii.gz"
    shutil.copy(work / "cohort" / "images" / "new.nii.gz", image)
    conf = {"backend": "nnunet", "nnunet_model": str(folder), "pretrained": "none", "device": "cpu"}
    with in_process_app(studies, conf) as client:
        info = client.get("/info/").json()
        assert {"emphysema", "lung", "emphysema_laa"} <= set(info["models"])
        assert "emphysema" not in info["trainers"]  # nnU-Net trains outside the app
        params, labels = infer_all(client, "emphysema", "new")
    assert params["label_names"] == {"emphysema": 1}
    assert params["model"]["backend"] == "nnunet" and params["model"]["folds"] == ["fold_0"]
    assert {"whole", "right", "left"} <= set(params["quantification"]["regions"])
    source = sitk.ReadImage(str(image))
    assert labels.shape == sitk.GetArrayFromImage(source).shape and set(np.unique(labels)) <= {0, 1}


def test_app_refuses_an_nnunet_model_with_other_labels(trained) -> None:
    from drasclr_monailabel.errors import ConfigError
    from drasclr_monailabel.tasks.conf import parse_app_conf, resolve_app_conf
    from drasclr_monailabel.tasks.factory import emphysema_tasks
    from drasclr_monailabel.tasks.infer import LungMaskCache

    folder, _ = trained
    conf = parse_app_conf({"backend": "nnunet", "nnunet_model": str(folder), "pretrained": "none", "device": "cpu",
                           "labels": "centrilobular,panlobular,paraseptal"})
    resolved = resolve_app_conf(conf, folder, str(folder))
    with pytest.raises(ConfigError, match=r"segments .*emphysema.*\(set --conf labels to match\)"):
        emphysema_tasks(resolved, LungMaskCache())
