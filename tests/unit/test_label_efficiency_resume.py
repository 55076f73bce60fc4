"""benchmarks/label_efficiency.py keeps finished runs and resumes from them (no fine-tuning here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "label_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("label_efficiency_under_test", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _context(bench, tmp_path: Path, encoder: str, size: str = "small", recipe=None):
    return bench.RunContext(tmp_path / "train", tmp_path / "test", Path(encoder), bench.SIZES[size], "cpu", tmp_path / "runs",
                            recipe or bench.Recipe())


def _finish(bench, run, context, dice: float) -> None:
    """Write the record a finished run leaves, as _score_run does."""
    bench.write_json(context.runs_dir / run.file_name,
                     {**bench.asdict(run), "dice": dice, "encoder": str(context.encoder),
                      "size": bench.asdict(context.size), "recipe": bench.asdict(context.recipe), "device": "cpu",
                      "inference": bench.INFERENCE})


def test_finished_runs_are_skipped_and_pretrained_ones_redone_for_another_encoder_or_recipe(bench, tmp_path: Path) -> None:
    scratch, pretrained = bench.Run("scratch", 1, 0), bench.Run("pretrained", 1, 0)
    first = _context(bench, tmp_path, "/encoders/a")
    assert not bench._is_done(scratch, first)
    _finish(bench, scratch, first, 0.5)
    _finish(bench, pretrained, first, 0.6)
    assert bench._is_done(scratch, first) and bench._is_done(pretrained, first)
    other_encoder = _context(bench, tmp_path, "/encoders/b")
    assert bench._is_done(scratch, other_encoder)  # scratch runs never read the encoder
    assert not bench._is_done(pretrained, other_encoder)
    full_rate = _context(bench, tmp_path, "/encoders/a", recipe=bench.Recipe(encoder_lr_scale=1.0, freeze_encoder_epochs=0))
    assert bench._is_done(scratch, full_rate) and not bench._is_done(pretrained, full_rate)
    other_size = _context(bench, tmp_path, "/encoders/a", size="medium")
    assert not bench._is_done(scratch, other_size) and not bench._is_done(pretrained, other_size)
    assert bench.read_run(first.runs_dir, pretrained)["dice"] == 0.6


def test_a_grid_with_every_run_finished_trains_nothing(bench, tmp_path: Path, capsys) -> None:
    context = _context(bench, tmp_path, "/encoders/a")
    grid = [bench.Run(mode, 1, 0) for mode in ("scratch", "pretrained")]
    for run in grid:
        _finish(bench, run, context, 0.5)
    bench.run_grid(grid, context, jobs=2)  # would fail preparing the (missing) cohorts if it trained
    assert "2 already done, 0 to do" in capsys.readouterr().out


def test_runs_scored_before_the_inference_was_recorded_are_redone(bench, tmp_path: Path) -> None:
    context = _context(bench, tmp_path, "/encoders/a")
    run = bench.Run("scratch", 1, 0)
    _finish(bench, run, context, 0.5)
    record = bench.read_run(context.runs_dir, run)
    bench.write_json(context.runs_dir / run.file_name, {k: v for k, v in record.items() if k != "inference"})
    assert not bench._is_done(run, context)  # scored with one location per 64^3 window
