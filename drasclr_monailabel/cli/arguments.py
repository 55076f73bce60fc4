"""Argument types shared by the ``drasclr`` commands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type accepting whole numbers of at least ``minimum``, with a message naming the bad text."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}, got '{text}'")
        return int(text)

    return parse
