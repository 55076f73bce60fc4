"""User-facing errors: each renders as one line that names the file (or key) and the problem.

The CLI turns any :class:`DrasclrError` into that line on stderr and exit code 2, so the
message must be complete on its own: what was read, what is wrong, and (where useful) what to do.
"""

from __future__ import annotations

from pathlib import Path


class DrasclrError(Exception):
    """Base class for errors that are the user's to fix (bad input, bad config)."""


class InputError(DrasclrError):
    """An input file or folder that cannot be used. Message: ``<path>: <problem>``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Rebuild from (path, problem), so the error crosses from a worker process intact."""
        return type(self), (self.path, self.problem)


class NoLungsError(InputError):
    """A readable CT in which no lungs were found (e.g. a head or abdomen CT)."""


class ConfigError(DrasclrError):
    """A configuration file or option with an unknown key or a value of the wrong type or range."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Rebuild from (source, problem), so the error crosses from a worker process intact."""
        return type(self), (self.source, self.problem)
