"""The `collector` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from collector import __version__
from collector.config import Settings, load_settings
from collector.errors import ConfigError, QueueCorruptError, StartupError, StorageError

EXIT_CONFIG = 2
EXIT_STARTUP = 1

#: Modules that add sub-commands: each has `register(subparsers)`, which adds its
#: parsers and sets `func(args) -> int` on them.
COMMAND_MODULES: tuple[str, ...] = (
    "collector.stats_cli", "collector.bridge_cli", "collector.admin_cli",
    "collector.maintenance_cli",
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="collector",
        description="Durable, ordered ingest of Rocket League statistics.",
    )
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML config file (default: $COLLECTOR_CONFIG, else none)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default 8765)")
    serve.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="where the queue lives (default $STATE_DIRECTORY or ./collector-data)")
    serve.add_argument("--handler", action="append", metavar="SPEC", dest="handlers",
                       help="built-in handler name or package.module:callable (repeatable; "
                            "replaces the configured list)")
    serve.set_defaults(func=_cmd_serve)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None) is not None:
        overrides["server.host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["server.port"] = args.port
    if getattr(args, "data_dir", None) is not None:
        overrides["server.data_dir"] = args.data_dir
    if getattr(args, "handlers", None):
        overrides["worker.handlers"] = tuple(args.handlers)
    return load_settings(getattr(args, "config", None), overrides=overrides)


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main` on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())


def _cmd_serve(args: argparse.Namespace) -> int:
    from collector.handlers import resolve
    from collector.logs import configure_logging
    from collector.server import GIL_SWITCH_INTERVAL_S, serve

    settings = _settings_from(args)
    settings.token_value()  # a missing token file is a config error, before anything starts
    for spec in settings.worker.handlers:  # an unknown handler too
        resolve(spec)
    configure_logging(settings.log.level, settings.log.format)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    run_async(lambda: serve(settings))
    return 0


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
        return 130


if __name__ == "__main__":
    sys.exit(main())
