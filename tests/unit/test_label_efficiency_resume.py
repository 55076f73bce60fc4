"""benchmarks/label_efficiency.py keeps finished runs and resumes from them; its subtype Dice and
binary labels (no fine-tuning here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    yield from benchmark_module("label_efficiency")


def _context(bench, tmp_path: Path, encoder: str, size: str = "small", recipe=None):
    encoders = {arm: Path(encoder) / arm for arm in bench.PRETRAINING_ARMS}
    return bench.RunContext(tmp_path / "train", tmp_path / "test", encoders, bench.SIZES[size], "cpu", tmp_path / "runs",
                            recipe or bench.Recipe())


def _finish(bench, run, context, dice: float, commit: str | None = None) -> None:
    """Write the record a finished run leaves, as _score_run does (``commit`` None: a record made
    before runs kept their commit)."""
    bench.write_json(context.runs_dir / run.file_name,
                     {**bench.asdict(run), "dice": dice, "encoder": str(context.encoders.get(run.arm)),
                      "size": bench.asdict(context.size), "recipe": bench.asdict(context.recipe), "device": "cpu",
                      "inference": bench.INFERENCE, **({"commit": commit} if commit else {})})


def test_finished_runs_are_skipped_and_pretrained_ones_redone_for_another_encoder_or_recipe(bench, tmp_path: Path) -> None:
    scratch, pretrained = bench.Run("A", "binary", "scratch", 1, 0), bench.Run("A", "binary", "pretrained", 1, 0)
    first = _context(bench, tmp_path, "/encoders/a")
    assert not bench._is_done(scratch, first)
    _finish(bench, scratch, first, 0.5)
    _finish(bench, pretrained, first, 0.6)
    assert bench._is_done(scratch, first) and bench._is_done(pretrained, first)
    other_encoder = _context(bench, tmp_path, "/encoders/b")
    assert bench._is_done(scratch, other_encoder)  # scratch runs never read the encoder
    monai = bench.Run("A", "binary", "monai_segresnet", 1, 0)
    _finish(bench, monai, first, 0.4)
    assert bench._is_done(monai, other_encoder)
    assert not bench._is_done(bench.Run("B", "binary", "scratch", 1, 0), first)  # another fold is another run
    assert not bench._is_done(bench.Run("A", "subtypes", "scratch", 1, 0), first)  # and so is another task
    assert not bench._is_done(pretrained, other_encoder)
    full_rate = _context(bench, tmp_path, "/encoders/a", recipe=bench.Recipe(encoder_lr_scale=1.0, freeze_encoder_epochs=0))
    assert bench._is_done(scratch, full_rate) and not bench._is_done(pretrained, full_rate)
    pretraining_statistics = _context(bench, tmp_path, "/encoders/a", recipe=bench.Recipe(encoder_batchnorm="pretraining"))
    assert not bench._is_done(pretrained, pretraining_statistics)
    record = bench.read_run(first.runs_dir, pretrained)  # made before the recipe had encoder_batchnorm: "pretraining" then
    del record["recipe"]["encoder_batchnorm"]
    bench.write_json(first.runs_dir / pretrained.file_name, record)
    assert bench._is_done(pretrained, pretraining_statistics) and not bench._is_done(pretrained, first)
    other_size = _context(bench, tmp_path, "/encoders/a", size="medium")
    assert not bench._is_done(scratch, other_size) and not bench._is_done(pretrained, other_size)
    assert bench.read_run(first.runs_dir, pretrained)["dice"] == 0.6


def test_a_grid_with_every_run_finished_trains_nothing(bench, tmp_path: Path, capsys) -> None:
    context = _context(bench, tmp_path, "/encoders/a")
    grid = [bench.Run("A", "subtypes", arm, 1, 0) for arm in bench.ARMS]
    for run in grid:
        _finish(bench, run, context, 0.5)
    bench.run_grid(grid, context, jobs=2)  # would fail preparing the (missing) cohorts if it trained
    assert f"{len(bench.ARMS)} already done, 0 to do" in capsys.readouterr().out


def test_runs_scored_before_the_inference_was_recorded_are_redone(bench, tmp_path: Path) -> None:
    context = _context(bench, tmp_path, "/encoders/a")
    run = bench.Run("A", "binary", "scratch", 1, 0)
    _finish(bench, run, context, 0.5)
    record = bench.read_run(context.runs_dir, run)
    bench.write_json(context.runs_dir / run.file_name, {k: v for k, v in record.items() if k != "inference"})
    assert not bench._is_done(run, context)  # scored with one location per 64^3 window


def test_subtype_dice_is_pooled_over_scans_and_skips_classes_no_scan_has(bench) -> None:
    truth = [np.array([1, 1, 2, 0]), np.array([1, 0, 0, 0])]
    predicted = [np.array([1, 2, 2, 0]), np.array([1, 1, 0, 3])]
    per_class = bench.pooled_class_dice(predicted, truth, ("centrilobular", "panlobular", "paraseptal"))
    # class 1: 2 overlapping voxels of 3 true and 3 predicted; class 2: 1 of 1 true and 2 predicted;
    # class 3 is in no truth: left out although it was predicted once
    assert per_class == pytest.approx({"centrilobular": 4 / 6, "panlobular": 2 / 3})


def test_binary_cases_are_made_from_the_subtype_labels(bench) -> None:
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    binary = bench.for_task([_Case(labels)], bench.BINARY)[0]
    assert binary.labels.tolist() == [0, 1, 1, 1] and binary.labels.dtype == np.uint8
    same = [_Case(labels)]
    assert bench.for_task(same, bench.SUBTYPES) is same


@dataclass(frozen=True)
class _Case:
    """The one field of a PreparedCase that for_task reads."""

    labels: np.ndarray


def test_the_central_slab_keeps_image_lungs_labels_and_coordinates_aligned(bench) -> None:
    from drasclr_monailabel.anatomy.pipeline import PreprocessedScan
    from drasclr_monailabel.segmentation.case import PreparedCase
    from drasclr_monailabel.segmentation.coordinates import CoordinateMap

    depth = 40
    lungs = np.zeros((depth, 4, 4), np.uint8)
    lungs[10:30] = 1  # lung z extent 10..29, centre 20
    z = np.arange(depth, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    scan = PreprocessedScan(image=z.astype(np.int16), lungs=lungs, origin=(0.0, 0.0, 100.0), spacing=(1.0, 1.0, 2.0),
                            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), registration=None, landmarks=np.array([[20, 1, 1]], np.int32),
                            valid=np.array([True]), timings={}, warnings=[])
    index_is_coordinate = CoordinateMap(linear=np.eye(3), constant=np.zeros(3), shape=lungs.shape)
    case = PreparedCase("c", scan, coordinate_map=index_is_coordinate, labels=z.astype(np.uint8), lungs_native=lungs)
    slab = bench.central_slab(case, 8)
    assert slab.scan.image[:, 0, 0].tolist() == list(range(16, 24))
    assert slab.labels[:, 0, 0].tolist() == list(range(16, 24)) and slab.coordinates[2, :, 0, 0].tolist() == list(range(16, 24))
    assert slab.lungs.shape == (8, 4, 4) and slab.scan.origin[2] == 100.0 + 16 * 2.0
    assert slab.scan.landmarks.tolist() == [[4, 1, 1]]


def test_a_subset_of_counts_and_seeds_is_summarised_from_its_own_runs_only(bench, tmp_path: Path) -> None:
    context = _context(bench, tmp_path, "/encoders/a", size="full")
    for count, seed, dice in ((2, 0, 0.4), (2, 1, 0.6), (8, 0, 0.5), (8, 1, 0.7), (1, 0, 0.1), (2, 2, 0.9)):
        _finish(bench, bench.Run("A", "subtypes", "scratch", count, seed), context, dice)
    result = bench.summarise(context.runs_dir, (2, 8), (0, 1), ("A",), ("subtypes",), ("scratch",))
    assert set(result["scratch"]) == {"2", "8"}  # count 1 was run but not asked for
    assert result["scratch"]["2"]["runs"] == [0.4, 0.6]  # seed 2 left out
    with pytest.raises(FileNotFoundError):  # count 4 never ran: no silent gap
        bench.summarise(context.runs_dir, (4,), (0, 1), ("A",), ("subtypes",), ("scratch",))


def test_the_summary_lists_the_commits_of_the_runs_it_pooled(bench, tmp_path: Path) -> None:
    context = _context(bench, tmp_path, "/encoders/a", size="full")
    for seed, commit in ((0, "abc"), (1, "def+modified"), (2, None)):
        _finish(bench, bench.Run("A", "subtypes", "scratch", 2, seed), context, 0.5, commit)
    _finish(bench, bench.Run("A", "subtypes", "scratch", 4, 0), context, 0.5, "not-pooled")
    result = bench.summarise(context.runs_dir, (2,), (0, 1, 2), ("A",), ("subtypes",), ("scratch",))
    assert result["commits"] == ["abc", "def+modified", "unrecorded"]


def test_the_code_version_is_this_checkout_s_commit(bench) -> None:
    version = bench.code_version()
    commit = version.removesuffix("+modified")
    assert len(commit) == 40 and int(commit, 16) >= 0  # a full hexadecimal git hash


def test_counts_outside_the_size_are_refused(bench, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--size", "small", "--counts", "2", "--out", str(tmp_path / "le.json")])
    assert stopped.value.code == 2
    assert "--counts must be among the small size's [1], got [2]" in capsys.readouterr().err


def test_a_budget_per_labelled_scan_grows_with_the_count_and_redoes_fixed_budget_runs(bench, tmp_path: Path) -> None:
    full = bench.replace(bench.SIZES["full"], finetune_epochs=32)
    per_scan = bench.replace(full, finetune_epochs_per_scan=16)
    assert [full.epochs_for(count) for count in (1, 8)] == [full.finetune_epochs] * 2
    assert [per_scan.epochs_for(count) for count in (1, 2, 8)] == [16, 32, 128]
    config = bench.finetune_config(per_scan, "cpu", 0, count=4)
    assert config.max_epochs * config.steps_per_epoch == 64 * full.steps_per_epoch
    fixed = bench.replace(_context(bench, tmp_path, "/encoders/a"), size=full)
    run = bench.Run("A", "subtypes", "scratch", 2, 0)
    _finish(bench, run, fixed, 0.5)
    record = bench.read_run(fixed.runs_dir, run)  # made before the size had finetune_epochs_per_scan: a fixed budget then
    del record["size"]["finetune_epochs_per_scan"]
    bench.write_json(fixed.runs_dir / run.file_name, record)
    assert bench._is_done(run, fixed)
    assert not bench._is_done(run, bench.replace(fixed, size=bench.replace(per_scan, finetune_epochs_per_scan=8)))
    assert bench._is_done(run, bench.replace(fixed, size=per_scan))  # 16 epochs per scan: the 32 epochs 2 scans got
    longer = bench.replace(full, finetune_epochs=128)
    eight = bench.Run("A", "subtypes", "scratch", 8, 0)
    _finish(bench, eight, bench.replace(fixed, size=per_scan), 0.35)
    assert bench._is_done(eight, bench.replace(fixed, size=longer)) and not bench._is_done(eight, fixed)
    record = bench.read_run(fixed.runs_dir, eight)
    record["size"]["a_field_of_a_later_version"] = 1
    bench.write_json(fixed.runs_dir / eight.file_name, record)
    assert not bench._is_done(eight, bench.replace(fixed, size=longer))


def test_the_two_budget_options_exclude_each_other(bench, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--size", "small", "--finetune-epochs", "2", "--epochs-per-scan", "4", "--out", str(tmp_path / "le.json")])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_another_pretraining_budget_keeps_the_runs_of_arms_that_are_not_pretrained(bench, tmp_path: Path) -> None:
    context = _context(bench, tmp_path, "/encoders/a", size="full")
    runs = {arm: bench.Run("A", "subtypes", arm, 2, 0) for arm in ("scratch", "monai_segresnet", "pretrained", "unconditioned")}
    for run in runs.values():
        _finish(bench, run, context, 0.5)
    longer = bench.replace(context, size=bench.replace(context.size, pretrain_steps=3 * context.size.pretrain_steps))
    assert bench._is_done(runs["scratch"], longer) and bench._is_done(runs["monai_segresnet"], longer)
    assert not bench._is_done(runs["pretrained"], longer) and not bench._is_done(runs["unconditioned"], longer)
    other_batch = bench.replace(context, size=bench.replace(context.size, pretrain_batch=2 * context.size.pretrain_batch))
    assert bench._is_done(runs["scratch"], other_batch) and not bench._is_done(runs["pretrained"], other_batch)
    shorter_finetuning = bench.replace(context, size=bench.replace(context.size, finetune_epochs=4))
    assert not bench._is_done(runs["scratch"], shorter_finetuning)  # fine-tuning budget still counts for every arm


def test_a_pretraining_budget_below_one_step_is_refused(bench, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--size", "small", "--pretrain-steps", "0", "--out", str(tmp_path / "le.json")])
    assert stopped.value.code == 2 and "--pretrain-steps must be at least 1, got 0" in capsys.readouterr().err
