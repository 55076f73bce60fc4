"""benchmarks/window_condition.py runs end to end at its CI size and writes its JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "window_condition.py"


def test_small_window_condition_run(tmp_path: Path) -> None:
    out = tmp_path / "wc.json"
    run = subprocess.run([sys.executable, str(BENCHMARK), "--size", "small", "--out", str(out)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["baseline"] == "train32_infer64"
    for mode in ("scratch", "pretrained"):
        summary = result["summary"][mode]
        assert set(summary) == set(result["conditions"]) and len(summary) == 5
        for entry in summary.values():
            assert 0.0 <= entry["dice_overlap_0"]["mean"] <= 1.0 and 0.0 <= entry["agreement"]["mean"] <= 1.0
            assert entry["seconds_overlap_0"]["mean"] > 0
        assert summary["train32_infer64"]["seconds_ratio_to_baseline"] == 1.0
    budget = result["settings"]["budgets"]
    assert budget["train32_infer32"]["batch"] == 4 and budget["train64_infer64"]["batch"] == 2
    assert result["command"].startswith("python benchmarks/window_condition.py --size small")
    assert out.with_suffix(".png").stat().st_size > 10_000
