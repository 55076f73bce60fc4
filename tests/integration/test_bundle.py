"""`drasclr export-bundle` writes a MONAI Bundle that MONAI's own tools check and run on real CT,
and that segments the scan as the app's infer task does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import load_default_atlas
from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.io import CTVolume, read_ct
from drasclr_monailabel.metrics import dice
from drasclr_monailabel.segmentation.case import prepare_case
from drasclr_monailabel.segmentation.checkpoint import build_model, save_checkpoint
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune
from drasclr_monailabel.tasks.in_process import infer_all
from drasclr_monailabel.tasks.infer import EmphysemaInferTask, LungMaskCache
from drasclr_monailabel.tasks.model_store import ModelStore
from tests.fixtures.app import AppServer, server_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC_FIELDS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
               "description", "authors", "copyright", "network_data_format")
"""Top-level keys the MONAI Bundle specification requires in metadata.json (docs.monai.io, mb_specification)."""
TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")
"""Keys the specification requires for every input and output of ``network_data_format`` (inputs add ``modality``)."""


def _fine_tuned_model_folder(folder: Path, volume: CTVolume, labels: np.ndarray, network: str) -> Path:
    """The app's model folder with a checkpoint of ``network`` fine-tuned 40 steps on one real scan's
    ``labels`` (Z, Y, X on the scan's grid)."""
    model, info = build_model(["emphysema"], network=network)
    finetune(model, [prepare_case(volume, label_map=labels)], FinetuneConfig(max_epochs=1, steps_per_epoch=40, seed=0),
             pretrained=False)
    save_checkpoint(model, folder / "emphysema.pt", {**info["meta"], "round": 1, "trained_on": ["lung1"]})
    return folder


@pytest.fixture(scope="module")
def app_model(tmp_path_factory: pytest.TempPathFactory, sample_lung1: Path) -> Path:
    """The DrasCLR U-Net fine-tuned briefly on real CT (lung1) to label the upper half of the scan's
    lung: learnt in a few steps from the atlas-coordinate channels, so the model draws a boundary
    through the lungs and the two pipelines' labels can be compared there."""
    volume = read_ct(sample_lung1)
    upper_half = np.zeros(volume.hu.shape, dtype=np.uint8)
    upper_half[volume.hu.shape[0] // 2:] = 1  # labels outside the lungs are dropped by prepare_case
    return _fine_tuned_model_folder(tmp_path_factory.mktemp("model"), volume, upper_half, "drasclr_unet")


@pytest.fixture(scope="module")
def segresnet_model(tmp_path_factory: pytest.TempPathFactory, sample_lung1: Path) -> Path:
    """MONAI's SegResNet (the app's ``--conf network segresnet``) fine-tuned briefly on lung1 to
    label its lung below -860 HU: it reads the CT channel alone, so its boundary is one of density."""
    volume = read_ct(sample_lung1)
    return _fine_tuned_model_folder(tmp_path_factory.mktemp("segresnet_model"), volume, (volume.hu < -860).astype(np.uint8),
                                    "segresnet")


@pytest.fixture(scope="module")
def lung2_study(tmp_path_factory: pytest.TempPathFactory, sample_lung2: Path) -> Path:
    """A studies folder holding the real CT lung2 as NIfTI (what MONAI Label's datastore serves),
    its middle 24 slices (120 mm of both lungs): a limited-coverage real CT that halves the time of
    each of this module's five whole-CT inferences."""
    studies = tmp_path_factory.mktemp("studies")
    sitk.WriteImage(sitk.ReadImage(str(sample_lung2))[:, :, 20:44], str(studies / "lung2.nii.gz"))
    return studies


def _app_answer(model_folder: Path, studies: Path) -> tuple[np.ndarray, sitk.Image, dict]:
    """The app's own infer task on lung2: its labels (Z, Y, X), the label image and the quantification."""
    task = EmphysemaInferTask(["emphysema"], ModelStore(model_folder), "cpu", LungMaskCache())
    path, result = task({"image": str(studies / "lung2.nii.gz")})
    label = sitk.ReadImage(path)
    Path(path).unlink()
    labels = sitk.GetArrayFromImage(label)
    lung_voxels = int(np.count_nonzero(task.lung_cache.lungs(read_ct(studies / "lung2.nii.gz"))))
    assert 0.02 < np.count_nonzero(labels) / lung_voxels < 0.98  # a boundary inside the lungs to compare
    return labels, label, result["quantification"]


@pytest.fixture(scope="module")
def app_answer(app_model: Path, lung2_study: Path) -> tuple[np.ndarray, sitk.Image, dict]:
    return _app_answer(app_model, lung2_study)


def test_the_bundle_is_checked_and_run_by_monai_and_matches_the_app(app_model: Path, lung2_study: Path, app_answer, tmp_path: Path) -> None:
    _check_and_run_the_bundle(app_model, "drasclr_unet", lung2_study, app_answer, tmp_path)


def test_a_segresnet_bundle_is_checked_and_run_by_monai_and_matches_the_app(segresnet_model: Path, lung2_study: Path,
                                                                            tmp_path: Path) -> None:
    _check_and_run_the_bundle(segresnet_model, "segresnet", lung2_study, _app_answer(segresnet_model, lung2_study), tmp_path)


def _check_and_run_the_bundle(model_folder: Path, network: str, studies: Path, app_answer, tmp_path: Path) -> None:
    """Export the model folder's checkpoint (of ``network``), check the bundle against the specification, let
    MONAI verify its network and run its inference on lung2, and compare with the app's answer."""
    bundle = tmp_path / "bundle"
    assert drasclr(["export-bundle", str(model_folder), "--out", str(bundle)]) == 0
    assert drasclr(["export-bundle", str(model_folder), "--out", str(bundle)]) == 2  # never replaced unasked
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt"]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert all(field in metadata for field in SPEC_FIELDS)
    for kind in ("inputs", "outputs"):
        for name, tensor in metadata["network_data_format"][kind].items():
            assert all(field in tensor for field in TENSOR_FIELDS), (kind, name)
    assert metadata["network_data_format"]["inputs"]["image"]["modality"] == "CT"
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "emphysema"}
    assert metadata["drasclr"]["atlas_id"] == load_default_atlas().atlas_id
    assert metadata["drasclr"]["network"] == network
    import torch

    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in weights.values())

    monai_bundle = [sys.executable, "-m", "monai.bundle"]
    configs = ["--meta_file", str(bundle / "configs" / "metadata.json"), "--config_file", str(bundle / "configs" / "inference.json")]
    verified = subprocess.run([*monai_bundle, "verify_net_in_out", "network_def", *configs, "--device", "cpu", "--n", "2"],
                              capture_output=True, text=True, timeout=600)
    assert verified.returncode == 0, verified.stderr[-2000:]

    results = tmp_path / "results"
    ran = subprocess.run([*monai_bundle, "run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                          "--dataset_dir", str(studies), "--output_dir", str(results)], capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    _assert_matches_the_app(sitk.ReadImage(str(results / "lung2_seg.nii.gz")),
                            json.loads((results / "lung2_quantification.json").read_text()), app_answer)


def test_monai_labels_own_bundle_app_serves_the_bundle(app_model: Path, lung2_study: Path, app_answer, tmp_path: Path) -> None:
    """MONAI Label's monaibundle sample app (copied from the installed package, as `monailabel apps
    --download` does) serves the exported bundle from its model folder, offline (zoo_source ngc:
    a bundle present locally is never looked up in the model zoo)."""
    copied = subprocess.run([str(Path(sys.executable).with_name("monailabel")), "apps", "--download", "--name", "monaibundle",
                             "--output", str(tmp_path / "apps")], capture_output=True, text=True, timeout=120,
                            env=server_env({"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}))
    assert copied.returncode == 0, copied.stdout + copied.stderr
    app = tmp_path / "apps" / "monaibundle"
    assert drasclr(["export-bundle", str(app_model), "--out", str(app / "model" / "drasclr_emphysema")]) == 0
    server = AppServer(lung2_study, {"models": "drasclr_emphysema", "zoo_source": "ngc", "sam2": "false"}, tmp_path, app=app)
    try:
        assert server.wait_ready(240), server.tail()
        assert "drasclr_emphysema" in server.get("/info/").json()["models"], server.tail()
        params, label = infer_all(server, "drasclr_emphysema", "lung2", with_geometry=True)
    finally:
        server.stop()
    _assert_matches_the_app(label, params["quantification"], app_answer)


def _assert_matches_the_app(label: sitk.Image, report: dict, app_answer: tuple[np.ndarray, sitk.Image, dict]) -> None:
    """Same grid as the app's label (to 1e-4 mm: MONAI Label writes through a RAS affine), Dice at least 0.99, the lungs' figures identical and those of
    the predicted region within 0.1 % (the app blends windows in float16, MONAI's inferer in
    float32, so a few voxels' labels differ)."""
    app_labels, app_label, app_report = app_answer
    assert label.GetSize() == app_label.GetSize()
    for geometry in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(label, geometry)() == pytest.approx(getattr(app_label, geometry)(), abs=1e-4), geometry
    assert dice(sitk.GetArrayFromImage(label) > 0, app_labels > 0) >= 0.99
    assert _without_masks(report) == _without_masks(app_report)
    for region, values in report["regions"].items():
        assert _numbers(values["mask"]) == pytest.approx(_numbers(app_report["regions"][region]["mask"]), rel=1e-3, abs=1e-3)


def _without_masks(report: dict) -> dict:
    return {**report, "regions": {name: {k: v for k, v in values.items() if k != "mask"} for name, values in report["regions"].items()}}


def _numbers(tree: dict) -> list[float]:
    """The numbers of a nested report block, in key order."""
    return [x for key in sorted(tree) for x in (_numbers(tree[key]) if isinstance(tree[key], dict) else
                                                [tree[key]] if isinstance(tree[key], (int, float)) else [])]
