"""Every `drasclr` command answers --help; usage errors exit 2 with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drasclr_monailabel.cli.main import command_modules, main

COMMANDS = [module.NAME for module in command_modules()]


def test_top_level_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"drasclr {name}" in capsys.readouterr().out


def test_console_script_help_is_fast_and_light() -> None:
    """`drasclr --help` must not import torch or SimpleITK (it is the first thing a user types)."""
    code = "import sys; from drasclr_monailabel.cli.main import build_parser; build_parser(); " \
           "print(sorted(m for m in ('torch', 'SimpleITK', 'monailabel') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
