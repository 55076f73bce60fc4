"""One ``drasclr`` subcommand run in-process by a benchmark script; a failure ends the benchmark
with one line naming the benchmark and the subcommand (the subcommand has printed its reason).
Also the check a benchmark makes before it reuses a finished pretraining run of its work folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.ssl.checkpoint import check_reusable


def step_runner(benchmark: str):
    """``run_step(argv)`` for the benchmark script ``benchmark`` (its file path or name)."""
    name = Path(benchmark).stem

    def run_step(argv: list[str]) -> None:
        code = drasclr(argv)
        if code != 0:
            raise SystemExit(f"{name}: 'drasclr {argv[0]}' failed with exit status {code}")

    return run_step


def check_reuse(benchmark: str, run: Path, config: Any) -> None:
    """End the benchmark ``benchmark`` with one line when the finished pretraining run ``run`` found
    in its work folder was trained with another recipe than ``config`` (a recipe dataclass)."""
    try:
        check_reusable(run, config)
    except DrasclrError as exc:
        raise SystemExit(f"{Path(benchmark).stem}: {exc}") from None
