"""benchmarks/label_efficiency.py runs end to end at its CI size, every arm and both tasks, and
writes the agreed JSON shape; then the ablation arms on the same work folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "label_efficiency.py"
ARMS = {"scratch", "pretrained", "unconditioned", "no_neighbour", "monai_segresnet"}


@pytest.mark.timeout(3000)
def test_small_label_efficiency_run_then_its_ablations(tmp_path: Path) -> None:
    out = tmp_path / "le.json"
    run = subprocess.run([sys.executable, str(BENCHMARK), "--size", "small", "--out", str(out)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"binary", "subtypes"} and result["headline_task"] == "subtypes"
    for task, arms in result["arms"].items():
        assert set(arms) == ARMS, task
        for arm, curve in arms.items():
            entry = curve["1"]
            assert set(entry) == {"mean", "std", "runs"} and len(entry["runs"]) == 1, (task, arm)
            assert 0.0 <= entry["mean"] <= 1.0
    assert result["pretrained"] == result["arms"]["subtypes"]["pretrained"]
    assert result["scratch"] == result["arms"]["subtypes"]["scratch"]
    assert result["binary"] == result["arms"]["binary"] and set(result["folds"]) == {"A"}
    assert 0.0 < result["threshold_950"] < 1.0
    for arm in ("pretrained", "unconditioned", "no_neighbour"):
        record = result["pretraining"]["A"][arm]
        assert record["samples_per_landmark_median"] >= 0 and 0.0 <= record["queue_fill"]["reached_mean"] <= 1.0
    for part in ("train", "test"):
        scans = result["subtype_voxels"]["A"][part]
        assert scans and all(set(voxels) == {"centrilobular", "panlobular", "paraseptal"} for voxels in scans.values())
        assert sum(sum(voxels.values()) for voxels in scans.values()) > 0, part
    runs = tmp_path / "le_work" / "runs"
    subtype_run = json.loads((runs / "A_subtypes_pretrained_1_0.json").read_text())
    assert set(subtype_run["dice_per_class"]) <= {"centrilobular", "panlobular", "paraseptal"}
    assert result["command"].startswith("python benchmarks/label_efficiency.py --size small")
    assert out.with_suffix(".png").stat().st_size > 10_000

    # the ablation arms, on the same work folder (its cohorts and cache), each with its own network and encoder
    out = tmp_path / "ablations.json"
    scratch = ["scratch_unconditioned", "scratch_groupnorm", "scratch_stride8", "scratch_segresnet_like"]
    run = subprocess.run([sys.executable, str(BENCHMARK), "--size", "small", "--tasks", "subtypes", "--arms", *scratch,
                          "pretrained_stride8", "--out", str(out), "--workdir", str(tmp_path / "le_work")],
                         capture_output=True, text=True, timeout=1200, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["arms"]["subtypes"]) == {*scratch, "pretrained_stride8"}
    assert "pretrained" not in result and set(result["pretraining"]["A"]) == {"pretrained_stride8"}
    networks = {}
    for arm in [*scratch, "pretrained_stride8"]:
        record = json.loads((tmp_path / "le_work" / "runs" / f"A_subtypes_{arm}_1_0.json").read_text())
        assert (record["encoder"] == "None") == (arm in scratch) and 0.0 <= record["dice"] <= 1.0, arm
        networks[arm] = record["network"]
    exported = json.loads((tmp_path / "le_work" / "fold_A" / "encoder_pretrained_stride8" / "encoder.json").read_text())
    assert networks["pretrained_stride8"] == networks["scratch_stride8"] and exported["architecture"]["block_channels"] == [16]
    assert networks["scratch_unconditioned"]["conditioned"] is False and networks["scratch_groupnorm"]["norm"] == "group"
    assert networks["scratch_stride8"]["block_channels"] == [16] and networks["scratch_stride8"]["norm"] == "batch"
    combined = networks["scratch_segresnet_like"]
    assert combined["block_channels"] == [16] and combined["norm"] == "group" and combined["conditioned"] is False
