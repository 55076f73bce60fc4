"""Entry point of the ``drasclr`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

import drasclr_monailabel
import drasclr_monailabel.cli as cli_package
from drasclr_monailabel.errors import DrasclrError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def command_modules() -> list[ModuleType]:
    """All ``cmd_*`` modules of :mod:`drasclr_monailabel.cli`, sorted by command name."""
    modules = [
        importlib.import_module(f"{cli_package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(cli_package.__path__)
        if info.name.startswith("cmd_")
    ]
    return sorted(modules, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drasclr",
        description="Anatomy-aware self-supervised pretraining for chest CT and emphysema annotation tools.",
    )
    parser.add_argument("--version", action="version", version=f"drasclr-monailabel {drasclr_monailabel.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules():
        # argparse %-formats help strings: escape the % of texts such as "%LAA-950".
        sub = commands.add_parser(module.NAME, help=module.HELP.replace("%", "%%"),
                                  description=(module.__doc__ or module.HELP).replace("%", "%%"),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; user errors print one line and return exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except DrasclrError as exc:
        print(f"drasclr {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"drasclr {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
