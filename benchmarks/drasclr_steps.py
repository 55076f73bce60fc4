"""One ``drasclr`` subcommand run in-process by a benchmark script; a failure ends the benchmark
with one line naming the benchmark and the subcommand (the subcommand has printed its reason).
Also what a benchmark does before it reuses a finished pretraining run of its work folder: the
recipe check, and a fresh export when the run is newer than its export."""

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


def export_checkpoint(benchmark: str, checkpoint: Path, out: Path) -> Path:
    """``drasclr export`` of ``checkpoint`` to ``out`` for the benchmark ``benchmark``, unless ``out``
    holds an export written after the checkpoint (a run retrained in place gets a new export)."""
    exported = out / "encoder.json"
    if not exported.is_file() or exported.stat().st_mtime < checkpoint.stat().st_mtime:
        step_runner(benchmark)(["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    return out
