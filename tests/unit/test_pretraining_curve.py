"""benchmarks/pretraining_curve.py: window means of a pretraining run's TensorBoard scalars."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def curve() -> Iterator[ModuleType]:
    yield from benchmark_module("pretraining_curve")


def test_window_means_of_a_logged_run(curve, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    with SummaryWriter(str(run / "tensorboard")) as writer:
        for step in range(0, 30, 5):  # steps 0..25: windows of 10 hold 0,5 / 10,15 / 20,25
            writer.add_scalar("train/loss_local", float(step), step)
            writer.add_scalar("train/loss_local_chance", 3.0, step)
        writer.add_scalar("train/acc_local", 0.5, 12)  # logged once, in the second window only
        writer.add_scalar("train/not_summarised", 9.0, 0)
    assert curve.main([str(run), "--window", "10", "--out", str(tmp_path / "curve.json")]) == 0
    result = json.loads((tmp_path / "curve.json").read_text())
    assert result["tags"] == ["train/loss_local", "train/loss_local_chance", "train/acc_local"]
    assert [row["train/loss_local"] for row in result["windows"]] == [2.5, 12.5, 22.5]
    assert [row["first_step"] for row in result["windows"]] == [0, 10, 20] and result["windows"][2]["last_step"] == 29
    assert "train/acc_local" not in result["windows"][0] and result["windows"][1]["train/acc_local"] == 0.5
    assert "10-19" in capsys.readouterr().out


def test_a_folder_without_tensorboard_is_refused_with_one_line(curve, tmp_path: Path, capsys) -> None:
    assert curve.main([str(tmp_path), "--out", str(tmp_path / "curve.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(str(tmp_path)) and "no tensorboard/ folder" in error and "\n" not in error
    assert not (tmp_path / "curve.json").exists()
