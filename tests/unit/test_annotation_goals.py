"""benchmarks/annotation_goals.py: issue 16's goals read off an annotation-loop result, on hand-made runs
whose ratios and Dice curves are known."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.fixtures.benchmark import benchmark_module

PER_SCAN = {"a": {"voxels": 100.0}, "b": {"voxels": 300.0}, "c": {"voxels": 200.0}}


@pytest.fixture(scope="module")
def reading() -> Iterator[ModuleType]:
    yield from benchmark_module("annotation_goals")


def record(picks: list[str], effort: list[float], dice: list[float]) -> dict:
    return {"picks": picks, "effort_voxels": effort, "dice": dice}


def result(strategies: dict) -> dict:
    return {"strategies": strategies, "baseline_laa_only": {"per_scan": PER_SCAN}}


def test_the_effort_ratio_is_taken_against_the_runs_own_picks(reading) -> None:
    assert reading.effort_ratio(record(["a", "b"], [50.0, 150.0], [0.1, 0.2]), PER_SCAN) == pytest.approx(0.5)
    assert reading.effort_ratio(record(["c", "a"], [600.0, 0.0], [0.1, 0.2]), PER_SCAN) == pytest.approx(2.0)


def test_scans_to_reach_is_the_first_round_at_or_above_the_target(reading) -> None:
    assert reading.scans_to_reach([0.1, 0.3, 0.25, 0.4], 0.3) == 2
    assert reading.scans_to_reach([0.1, 0.2], 0.3) is None


def test_the_cheapest_pretrained_run_is_judged_on_both_goals(reading) -> None:
    runs = {
        "random/pretrained": {"seeds": {"0": record(["a", "b"], [100.0, 300.0], [0.2, 0.4]),
                                        "1": record(["b", "c"], [300.0, 200.0], [0.2, 0.6])}},
        "hybrid/pretrained": {"seeds": {"0": record(["a", "c"], [40.0, 80.0], [0.5, 0.6]),
                                        "1": record(["c", "b"], [100.0, 100.0], [0.3, 0.4])}},
        "random/scratch": {"seeds": {"0": record(["a", "b"], [100.0, 100.0], [0.3, 0.3])}},
        "diversity/scratch": {"skipped": "needs an encoder"},
    }
    goals = reading.goals(result(runs))
    assert goals["effort_ratio"]["hybrid/pretrained"] == {"seeds": {"0": 0.4, "1": 0.4}, "mean": 0.4}
    assert goals["effort_ratio"]["random/pretrained"]["mean"] == pytest.approx(1.0)
    assert "diversity/scratch" not in goals["effort_ratio"]
    # random/pretrained's last Dice, over the seeds both ran: (0.4 + 0.6) / 2 = 0.5; hybrid's mean curve 0.4, 0.5
    assert goals["scans_to_random_last_dice"] == {"random/pretrained": 2, "hybrid/pretrained": 2, "random/scratch": 1}
    assert goals["best_pretrained"] == "hybrid/pretrained"
    assert goals["goal1_met"] is True and goals["goal2_met"] is True


def test_a_run_that_costs_more_and_never_catches_up_misses_both(reading) -> None:
    runs = {"random/pretrained": {"seeds": {"0": record(["a", "b"], [100.0, 300.0], [0.3, 0.5])}},
            "first/pretrained": {"seeds": {"0": record(["a", "c"], [200.0, 300.0], [0.2, 0.4])}},
            "first/scratch": {"seeds": {"0": record(["a", "c"], [200.0, 300.0], [0.2, 0.4])}}}
    goals = reading.goals(result(runs))
    assert goals["best_pretrained"] == "random/pretrained"  # ratio 1.0 against first's 500/300
    assert goals["scans_to_random_last_dice"]["first/pretrained"] is None
    assert goals["scans_to_random_last_dice"]["first/scratch"] is None  # no random/scratch run to compare with
    assert goals["goal1_met"] is False and goals["goal2_met"] is True  # random reaches its own last Dice at 2


def test_without_a_pretrained_run_no_goal_is_judged(reading) -> None:
    goals = reading.goals(result({"random/scratch": {"seeds": {"0": record(["a"], [50.0], [0.3])}}}))
    assert (goals["best_pretrained"], goals["goal1_met"], goals["goal2_met"]) == (None, None, None)


def test_a_cheapest_run_that_never_reaches_randoms_dice_misses_goal_2(reading) -> None:
    runs = {"random/pretrained": {"seeds": {"0": record(["a", "b"], [100.0, 300.0], [0.3, 0.5])}},
            "diversity/pretrained": {"seeds": {"0": record(["a", "c"], [40.0, 80.0], [0.2, 0.4])}}}
    goals = reading.goals(result(runs))
    assert goals["best_pretrained"] == "diversity/pretrained" and goals["scans_to_random_last_dice"]["diversity/pretrained"] is None
    assert goals["goal1_met"] is True and goals["goal2_met"] is False
