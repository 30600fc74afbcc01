"""`collector serve`: the daemon in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from collector.cli import args as types
from collector.config import Settings, load_settings


def register(sub: Any) -> None:
    """Add `serve`."""
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML config file (default: $COLLECTOR_CONFIG, else none)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=types.port, help="port to listen on (default 8765)")
    serve.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="where the queue lives (default $STATE_DIRECTORY or ./collector-data)")
    serve.add_argument("--handler", action="append", metavar="SPEC", dest="handlers",
                       help="built-in handler name or package.module:callable (repeatable; "
                            "replaces the configured list)")
    serve.set_defaults(func=_cmd_serve)


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
    from collector.server.run import GIL_SWITCH_INTERVAL_S, serve

    settings = _settings_from(args)
    settings.token_value()  # a missing token file is a config error, before anything starts
    for spec in settings.worker.handlers:  # an unknown handler too
        resolve(spec)
    configure_logging(settings.log.level, settings.log.format)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    run_async(lambda: serve(settings))
    return 0
