"""The `collector` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from collector import __version__
from collector.errors import ConfigError, QueueCorruptError, StartupError, StorageError

EXIT_CONFIG = 2
EXIT_STARTUP = 1

#: Modules that add sub-commands: each has `register(subparsers)`, which adds its
#: parsers and sets `func(args) -> int` on them.
COMMAND_MODULES: tuple[str, ...] = (
    "collector.cli.serve", "collector.cli.stats", "collector.cli.bridge", "collector.cli.admin",
    "collector.cli.maintenance", "collector.cli.migrate",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and where to read more), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = _Parser(
        prog="collector",
        description="Durable, ordered ingest of Rocket League statistics.",
    )
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `collector` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"collector: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StartupError, QueueCorruptError, StorageError) as exc:
        print(f"collector: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        print("collector: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
