"""benchmarks/annotation_loop.py's command line: part of the grid and other app options run in folders of
their own, so a partial invocation reuses the full grid's runs and another round budget never
overwrites them; a malformed app option is one line and exit status 2."""

from __future__ import annotations

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
