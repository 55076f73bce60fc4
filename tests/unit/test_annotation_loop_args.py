"""benchmarks/annotation_loop.py's command line: part of the grid and other app options run in folders of
their own, so a partial invocation reuses the full grid's runs and another round budget never
overwrites them; a malformed app option is one line and exit status 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def loop() -> Iterator[ModuleType]:
    yield from benchmark_module("annotation_loop")


def test_part_of_the_grid_runs_in_the_full_grids_folders(loop, tmp_path: Path) -> None:
    full = loop.SIZES["full"]
    part = replace(full, strategies=("random",), encoders=("pretrained",), seeds=(0,))
    assert loop.run_folder(part, "full", "random", "pretrained", 0, tmp_path) == \
        loop.run_folder(full, "full", "random", "pretrained", 0, tmp_path) == tmp_path / "runs" / "random_pretrained_0"


def test_other_app_options_name_their_own_folder(loop, tmp_path: Path) -> None:
    small = loop.SIZES["small"]
    longer = replace(small, app_conf={**small.app_conf, "max_epochs": "16", "lr": "0.001"})
    assert loop.run_folder(longer, "small", "hybrid", "scratch", 2, tmp_path).name == "hybrid_scratch_2_lr-0.001_max_epochs-16"
    path_valued = replace(small, app_conf={**small.app_conf, "model_dir": "/data/models"})
    assert loop.run_folder(path_valued, "small", "first", "scratch", 0, tmp_path).parent == tmp_path / "runs"
    same = replace(small, app_conf=dict(small.app_conf))  # the size's own value given again changes nothing
    assert loop.run_folder(same, "small", "hybrid", "scratch", 2, tmp_path).name == "hybrid_scratch_2"


def test_a_finished_run_keeps_the_whole_folder_name_even_with_a_dot_in_a_value(loop, tmp_path: Path) -> None:
    small = loop.SIZES["small"]
    fixed = replace(small, app_conf={**small.app_conf, "emphysema_threshold": "0.5"})
    folder = loop.run_folder(fixed, "small", "random", "pretrained", 0, tmp_path)
    assert loop.finished_run_file(folder) == tmp_path / "runs" / "random_pretrained_0_emphysema_threshold-0.5.json"
    other = replace(small, app_conf={**small.app_conf, "emphysema_threshold": "0.7"})
    assert loop.finished_run_file(loop.run_folder(other, "small", "random", "pretrained", 0, tmp_path)) != \
        loop.finished_run_file(folder)


def test_app_options_are_parsed_and_a_malformed_one_is_refused(loop, capsys) -> None:
    args = loop.parse_args(["--out", "x.json", "--app-conf", "max_epochs=16", "lr=1e-3", "--strategies", "random",
                            "--seeds", "1", "2"])
    assert args.app_conf == {"max_epochs": "16", "lr": "1e-3"}
    assert (args.strategies, args.seeds) == (["random"], [1, 2])
    with pytest.raises(SystemExit) as stopped:
        loop.parse_args(["--out", "x.json", "--app-conf", "max_epochs"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["annotation_loop.py: error: --app-conf max_epochs: give each option as KEY=VALUE"]


def test_options_the_benchmark_sets_itself_are_refused(loop, capsys) -> None:
    """``app_conf`` would silently override them: the run would not be what its folder says."""
    with pytest.raises(SystemExit) as stopped:
        loop.parse_args(["--out", "x.json", "--app-conf", "seed=3", "max_epochs=8", "pretrained=/some/encoder"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("annotation_loop.py: error: --app-conf pretrained, seed: set by the "
                                               "benchmark itself (the encoder: --encoder; seeds: --seeds)")


def test_a_runs_settings_hold_every_app_default(loop, tmp_path: Path) -> None:
    """An option left at its default and the same value given explicitly are one setting; another value is another."""
    from drasclr_monailabel.segmentation.training import FinetuneConfig

    full = loop.SIZES["full"]
    options = loop.app_options(loop.app_conf(full, None, 1, tmp_path))
    assert options["training"]["max_epochs"] == FinetuneConfig().max_epochs
    assert options["app"]["emphysema_threshold"] == "labelled" and options["training"]["seed"] == 1
    explicit = replace(full, app_conf={**full.app_conf, "max_epochs": str(FinetuneConfig().max_epochs)})
    assert loop.app_options(loop.app_conf(explicit, None, 1, tmp_path)) == options
    longer = replace(full, app_conf={**full.app_conf, "max_epochs": "16"})
    assert loop.app_options(loop.app_conf(longer, None, 1, tmp_path))["training"]["max_epochs"] == 16


def test_a_changed_trainer_default_makes_a_finished_run_stale(loop, tmp_path: Path, monkeypatch, capsys) -> None:
    from dataclasses import dataclass

    from drasclr_monailabel.segmentation import training

    conf = loop.app_conf(loop.SIZES["full"], None, 0, tmp_path)
    settings = {"strategy": "random", "app_options": loop.app_options(conf)}
    done = tmp_path / "random_scratch_0.json"
    done.write_text(json.dumps({"settings": settings, "record": {"dice": [0.3]}}))
    assert loop.finished_record(done, settings, "random/scratch seed 0") == {"dice": [0.3]}
    assert capsys.readouterr().out == "random/scratch seed 0: already done\n"

    @dataclass(frozen=True)
    class LongerRounds(training.FinetuneConfig):
        max_epochs: int = 8

    monkeypatch.setattr(training, "FinetuneConfig", LongerRounds)
    now = {"strategy": "random", "app_options": loop.app_options(conf)}
    assert loop.finished_record(done, now, "random/scratch seed 0") is None
    assert "other settings (training.max_epochs); running it again" in capsys.readouterr().out
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"settings": {"strategy": "first"}, "record": {}}))
    assert loop.finished_record(legacy, now, "random/scratch seed 0") is None
    assert "(strategy, app_options (not recorded))" in capsys.readouterr().out
    assert loop.finished_record(tmp_path / "absent.json", now, "random/scratch seed 0") is None
