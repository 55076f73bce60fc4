"""`drasclr export-bundle` writes a MONAI Bundle that MONAI's own tools check and run on real CT,
and that segments the scan as the app's infer task does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import load_default_atlas
from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.metrics import dice
from drasclr_monailabel.segmentation.case import prepare_case
from drasclr_monailabel.segmentation.checkpoint import build_model, save_checkpoint
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune
from drasclr_monailabel.tasks.infer import EmphysemaInferTask, LungMaskCache
from drasclr_monailabel.tasks.model_store import ModelStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC_FIELDS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
               "description", "authors", "copyright", "network_data_format")
"""Top-level keys the MONAI Bundle specification requires in metadata.json (docs.monai.io, mb_specification)."""
TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")
"""Keys the specification requires for every input and output of ``network_data_format`` (inputs add ``modality``)."""


@pytest.fixture(scope="module")
def app_model(tmp_path_factory: pytest.TempPathFactory, sample_lung1: Path) -> Path:
    """The app's model folder with a checkpoint fine-tuned briefly on real CT (lung1) to label the
    upper half of the scan's lung: learnt in a few steps from the atlas-coordinate channels, so the
    model draws a boundary through the lungs and the two pipelines' labels can be compared there."""
    volume = read_ct(sample_lung1)
    upper_half = np.zeros(volume.hu.shape, dtype=np.uint8)
    upper_half[volume.hu.shape[0] // 2:] = 1  # labels outside the lungs are dropped by prepare_case
    case = prepare_case(volume, label_map=upper_half)
    model, info = build_model(["emphysema"])
    finetune(model, [case], FinetuneConfig(max_epochs=1, steps_per_epoch=40, seed=0), pretrained=False)
    folder = tmp_path_factory.mktemp("model")
    save_checkpoint(model, folder / "emphysema.pt", {**info["meta"], "round": 1, "trained_on": ["lung1"]})
    return folder


def test_the_bundle_is_checked_and_run_by_monai_and_matches_the_app(app_model: Path, sample_lung2: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert drasclr(["export-bundle", str(app_model), "--out", str(bundle)]) == 0
    assert drasclr(["export-bundle", str(app_model), "--out", str(bundle)]) == 2  # never replaced unasked
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
    import torch

    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in weights.values())

    monai_bundle = [sys.executable, "-m", "monai.bundle"]
    configs = ["--meta_file", str(bundle / "configs" / "metadata.json"), "--config_file", str(bundle / "configs" / "inference.json")]
    verified = subprocess.run([*monai_bundle, "verify_net_in_out", "network_def", *configs, "--device", "cpu", "--n", "2"],
                              capture_output=True, text=True, timeout=600)
    assert verified.returncode == 0, verified.stderr[-2000:]

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "lung2.nrrd").symlink_to(sample_lung2)
    results = tmp_path / "results"
    ran = subprocess.run([*monai_bundle, "run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                          "--dataset_dir", str(scans), "--output_dir", str(results)], capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    bundle_label = sitk.ReadImage(str(results / "lung2_seg.nii.gz"))
    bundle_report = json.loads((results / "lung2_quantification.json").read_text())

    task = EmphysemaInferTask(["emphysema"], ModelStore(app_model), "cpu", LungMaskCache())
    app_path, app_result = task({"image": str(scans / "lung2.nrrd")})
    app_label = sitk.ReadImage(app_path)
    Path(app_path).unlink()
    assert bundle_label.GetSize() == app_label.GetSize() and bundle_label.GetOrigin() == app_label.GetOrigin()
    assert bundle_label.GetSpacing() == app_label.GetSpacing() and bundle_label.GetDirection() == app_label.GetDirection()
    app_labels, bundle_labels = sitk.GetArrayFromImage(app_label), sitk.GetArrayFromImage(bundle_label)
    lung_voxels = int(np.count_nonzero(task.lung_cache.lungs(read_ct(scans / "lung2.nrrd"))))
    assert 0.02 < np.count_nonzero(app_labels) / lung_voxels < 0.98  # a boundary inside the lungs to compare
    assert dice(bundle_labels > 0, app_labels > 0) >= 0.99
    # The lungs' figures are identical; those of the predicted region differ only where a voxel's
    # label does (the app blends windows in float16, MONAI's inferer in float32).
    app_report = app_result["quantification"]
    assert _without_masks(bundle_report) == _without_masks(app_report)
    for region, values in bundle_report["regions"].items():
        assert _numbers(values["mask"]) == pytest.approx(_numbers(app_report["regions"][region]["mask"]), rel=1e-3, abs=1e-3)


def _without_masks(report: dict) -> dict:
    return {**report, "regions": {name: {k: v for k, v in values.items() if k != "mask"} for name, values in report["regions"].items()}}


def _numbers(tree: dict) -> list[float]:
    """The numbers of a nested report block, in key order."""
    return [x for key in sorted(tree) for x in (_numbers(tree[key]) if isinstance(tree[key], dict) else
                                                [tree[key]] if isinstance(tree[key], (int, float)) else [])]
