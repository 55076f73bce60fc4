"""One ``drasclr`` subcommand run in-process by a benchmark script; a failure ends the benchmark
with one line naming the benchmark and the subcommand (the subcommand has printed its reason)."""

from __future__ import annotations

from pathlib import Path

from drasclr_monailabel.cli.main import main as drasclr


def step_runner(benchmark: str):
    """``run_step(argv)`` for the benchmark script ``benchmark`` (its file path or name)."""
    name = Path(benchmark).stem

    def run_step(argv: list[str]) -> None:
        code = drasclr(argv)
        if code != 0:
            raise SystemExit(f"{name}: 'drasclr {argv[0]}' failed with exit status {code}")

    return run_step
