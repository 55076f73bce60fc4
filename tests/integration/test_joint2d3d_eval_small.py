"""benchmarks/joint2d3d_eval.py runs end to end at its CI size (phantoms): every arm and measure in
the JSON, the 2D-only arm at the joint arm's compute, SwAV targets sharper with the queues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "joint2d3d_eval.py"


def test_small_joint2d3d_evaluation_run(tmp_path: Path) -> None:
    out = tmp_path / "joint_eval.json"
    run = subprocess.run([sys.executable, str(BENCHMARK), "--size", "small", "--out", str(out)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    arms = {"joint", "intra_only", "random"}
    for name, values in result["measures"].items():
        assert set(values) == arms, name
    for name in ("slice_presence_auc", "retrieval_top1", "retrieval_mrr"):
        assert all(0.0 <= v <= 1.0 for v in result["measures"][name].values()), name
    assert set(result["goal"]) == {"slice_presence_auc", "severity_r2", "retrieval_top1"}
    assert set(result["diagnostics"]["volume_spread"]) == arms and all(v > 0 for v in result["diagnostics"]["volume_spread"].values())
    compute = result["compute"]
    assert compute["intra_only"]["steps"] > compute["joint"]["steps"]  # a 2D-only step is cheaper: it gets more of them
    assert abs(compute["intra_only"]["megapixel_passes"] / compute["joint"]["megapixel_passes"] - 1) < 0.1
    assert 0.0 < result["heldout"]["slices_with_emphysema"] < 1.0 and result["baselines"]["slice_presence_auc"] > 0.5
    targets = result["targets"]["joint"]
    assert targets["inter"] is not None and targets["inter"] < targets["inter_uniform"]
    assert result["command"].startswith("python benchmarks/joint2d3d_eval.py --size small")
    assert out.with_suffix(".png").stat().st_size > 10_000
