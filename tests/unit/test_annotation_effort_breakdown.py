"""benchmarks/annotation_effort_breakdown.py: a pre-segmentation's changed voxels split into false
positives inside and outside the true lungs and false negatives, which add up to the loop's effort."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def breakdown() -> Iterator[ModuleType]:
    yield from benchmark_module("annotation_effort_breakdown")


def test_correction_parts_add_up_to_the_loops_effort(breakdown) -> None:
    from annotation_session import correction_effort

    rng = np.random.default_rng(0)
    lungs = np.zeros((6, 8, 8), bool)
    lungs[1:5, 2:6, 1:7] = True
    truth = lungs & (rng.random(lungs.shape) < 0.3)
    prediction = rng.random(lungs.shape) < 0.25  # some of it outside the lungs
    parts = breakdown.correction_parts(prediction, truth, lungs)
    assert parts["false_positive_outside_lungs"] == np.count_nonzero(prediction & ~lungs)
    assert parts["false_positive_in_lungs"] == np.count_nonzero(prediction & lungs & ~truth)
    assert parts["false_negative"] == np.count_nonzero(truth & ~prediction)
    changed = parts["false_positive_in_lungs"] + parts["false_positive_outside_lungs"] + parts["false_negative"]
    assert changed == correction_effort(prediction.astype(np.uint8), truth.astype(np.uint8)).voxels > 0
    assert (parts["predicted"], parts["true"]) == (np.count_nonzero(prediction), np.count_nonzero(truth))


def test_a_larger_prediction_can_raise_dice_and_the_effort_together(breakdown) -> None:
    """The case the script exists for: Dice rewards the true positives a larger prediction gains."""
    lungs = np.ones((1, 1, 1000), bool)
    truth = np.zeros_like(lungs)
    truth[..., :300] = True
    small = np.zeros_like(lungs)
    small[..., 210:360] = True  # 90 true positives, 60 false
    large = np.zeros_like(lungs)
    large[..., 30:930] = True  # 270 true positives, 630 false
    small_parts, large_parts = (breakdown.correction_parts(p, truth, lungs) for p in (small, large))
    assert large_parts["dice"] > small_parts["dice"]
    effort = {name: p["false_positive_in_lungs"] + p["false_negative"] for name, p in (("small", small_parts), ("large", large_parts))}
    assert effort["large"] > 2 * effort["small"]


@pytest.mark.parametrize("thresholds", [["0"], ["0.5", "1.0"], ["-0.2"]])
def test_a_threshold_outside_zero_to_one_is_refused_before_any_work(breakdown, tmp_path, capsys, thresholds) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        breakdown.main(["--workdir", str(tmp_path), "--runs", "random_pretrained_0", "--thresholds", *thresholds,
                        "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--thresholds must lie between 0 and 1" in capsys.readouterr().err
    assert not out.exists()
