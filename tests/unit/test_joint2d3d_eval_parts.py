"""benchmarks/joint2d3d_eval.py, its parts that need no training: the SwAV target entropies come
from the run's TensorBoard events (so an arm that was stopped and resumed, or trained by an earlier
invocation, still reports them); the spread of the volume embeddings; the slice probe's AUC within a scan;
pooling the results of several seeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def evaluation() -> Iterator[ModuleType]:
    yield from benchmark_module("joint2d3d_eval")


def test_target_entropy_covers_a_resumed_run_and_ignores_early_steps(evaluation, tmp_path: Path) -> None:
    run = tmp_path / "joint"
    with SummaryWriter(str(run / "tensorboard")) as writer:  # first invocation, stopped at step 50
        for step in range(10, 60, 10):
            writer.add_scalar("train/target_entropy_inter", 2.5, step)
            writer.add_scalar("train/target_entropy_intra", 4.0, step)
    with SummaryWriter(str(run / "tensorboard"), purge_step=50) as writer:  # resumed to step 100
        for step in range(60, 110, 10):
            writer.add_scalar("train/target_entropy_inter", 1.0 if step >= 80 else 2.0, step)
            writer.add_scalar("train/target_entropy_intra", 3.0, step)
    config = evaluation.load_recipe(evaluation.RECIPE, list(evaluation.EVAL_RECIPE))
    targets = evaluation.target_entropy(run, config)
    assert targets["inter"] == 1.0 and targets["intra"] == 3.0  # steps 80-100: the last fifth of 100
    assert targets["inter_uniform"] == round(float(np.log(16)), 3)


def test_target_entropy_of_a_run_that_logged_none_is_none(evaluation, tmp_path: Path) -> None:
    config = evaluation.load_recipe(evaluation.RECIPE, list(evaluation.EVAL_RECIPE))
    assert evaluation.target_entropy(tmp_path / "missing", config)["inter"] is None


def test_relative_spread_is_the_rms_distance_from_the_mean_over_its_length(evaluation) -> None:
    assert evaluation.relative_spread(np.array([[1.0, 0.5], [1.0, -0.5]])) == 0.5
    assert evaluation.relative_spread(np.array([[3.0, 4.0], [3.0, 4.0]])) == 0.0  # collapsed: one vector for every scan


def _presence_aucs(evaluation, features: np.ndarray) -> tuple[float, float]:
    """Six scans of four slices, three folds of two scans; scans 0, 2, 4 hold emphysema in their
    last two slices, scans 1, 3, 5 none."""
    presence = np.array([0, 0, 1, 1, 0, 0, 0, 0] * 3)
    scans = np.repeat(np.arange(6), 4)
    heldout = evaluation.Heldout(scans=[], deformed=[], severity=np.zeros(6), folds=[], slice_index=[], presence=presence,
                                 slice_scan=scans, slice_density=features, scan_density=np.zeros((6, 4)))
    splits = [(np.flatnonzero(~np.isin(scans, test)), np.flatnonzero(np.isin(scans, test))) for test in ([0, 1], [2, 3], [4, 5])]
    return evaluation.presence_aucs(features, heldout, splits)


def test_within_scan_auc_separates_ranking_slices_from_telling_scans_apart(evaluation) -> None:
    within_signal = np.array([0.0, 0.1, 0.2, 0.3] * 6)
    scan_shift = np.repeat(np.random.default_rng(0).normal(size=6) * 3, 4)  # differs between scans, says nothing
    folds, within = _presence_aucs(evaluation, np.stack([within_signal, scan_shift], axis=1))
    assert within == 1.0 and folds < 0.7  # the shift between scans costs the fold AUC, not the ranking within a scan
    # Only a shift (the scans without emphysema lie higher): the probe tells scans apart and, doing
    # so, ranks every scan's own slices backwards; the fold AUC does not show it.
    folds, within = _presence_aucs(evaluation, (within_signal + 5.0 * (np.repeat(np.arange(6), 4) % 2))[:, None])
    assert within == 0.0 and folds > 0.6


def _seed_result(seed: int, joint: float, extra_arm: bool) -> dict:
    arms = {"joint": joint, "intra_only": 0.5, "random": 0.4, **({"joint_no_inter": 0.9} if extra_arm else {})}
    return {"settings": {"seed": seed}, "measures": {name: dict(arms) for name in ("slice_presence_auc", "severity_r2", "retrieval_top1")},
            "alternates": {"slice_presence_auc_within_scan": dict(arms)}, "diagnostics": {"volume_spread": dict(arms)},
            "baselines": {"slice_presence_auc": 0.57}, "chance": {"slice_presence_auc": 0.5, "severity_r2": 0.0, "retrieval_top1": 0.1}}


def test_pooling_seeds_gives_means_spreads_and_the_goal_on_the_means(evaluation, tmp_path: Path) -> None:
    paths = []
    for seed, joint, extra in ((0, 0.3, True), (1, 0.9, False)):
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(_seed_result(seed, joint, extra)))
    out = tmp_path / "pooled.json"
    assert evaluation.main(["--pool", *map(str, paths), "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())
    assert pooled["seeds"] == [0, 1]
    assert pooled["measures"]["retrieval_top1"] == {"joint": pytest.approx(0.6), "intra_only": 0.5, "random": 0.4}  # arms of every seed only
    assert pooled["measures_per_seed"]["retrieval_top1"]["joint"] == {"values": [0.3, 0.9], "std": pytest.approx(0.3)}
    assert pooled["goal"] == {"slice_presence_auc": True, "severity_r2": True, "retrieval_top1": True}  # 0.6 > 0.5 > 0.4
    assert pooled["diagnostics"]["volume_spread"]["joint"] == pytest.approx(0.6)
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_pooling_the_same_seed_twice_is_refused(evaluation, tmp_path: Path) -> None:
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(_seed_result(0, 0.3, False)))
    with pytest.raises(SystemExit, match="repeat a seed"):
        evaluation.main(["--pool", str(path), str(path), "--out", str(tmp_path / "pooled.json")])
