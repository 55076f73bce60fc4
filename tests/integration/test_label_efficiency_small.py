"""benchmarks/label_efficiency.py runs end to end at its CI size and writes the agreed JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "label_efficiency.py"


def test_small_label_efficiency_run(tmp_path: Path) -> None:
    out = tmp_path / "le.json"
    run = subprocess.run([sys.executable, str(BENCHMARK), "--size", "small", "--out", str(out)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    for mode in ("pretrained", "scratch"):
        entry = result[mode]["1"]
        assert set(entry) == {"mean", "std", "runs"} and len(entry["runs"]) == 1
        assert 0.0 <= entry["mean"] <= 1.0
    assert 0.0 < result["threshold_950"] < 1.0
    assert result["command"].startswith("python benchmarks/label_efficiency.py --size small")
    assert out.with_suffix(".png").stat().st_size > 10_000
