"""Sub-commands `bridge`, `replay` and `record`: from the game to the collector.

These run on the gaming PC (Windows included): plain asyncio, no uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from collector.cli import args as types
from collector.config import read_token_file
from collector.errors import ConfigError


def _add_collector_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--to", required=required, metavar="URL",
                        help="the collector, e.g. http://homeserver:8765")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token of the collector (visible in the "
                                       "process list: prefer --token-file)")
    token.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the bearer token")
    parser.add_argument("--max-backoff", type=types.positive_float, default=30.0, metavar="SECONDS",
                        help="longest wait between two tries of a failed request (default 30)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default="info")


def register(subparsers: Any) -> None:
    """Add `bridge`, `replay` and `record` to the `collector` command line."""
    from collector.bridge.replay import DEFAULT_RATE

    bridge = subparsers.add_parser(
        "bridge", help="relay the game's Stats API socket to a collector",
        description="Read Rocket League's Stats API socket, spool every message on disk "
                    "and post it to a collector, in order, exactly once.")
    bridge.add_argument("--game", default="127.0.0.1:49123", metavar="HOST:PORT",
                        help="the game's Stats API socket (default 127.0.0.1:49123)")
    _add_collector_options(bridge, required=False)  # checked below: --show-dead needs none
    bridge.add_argument("--spool-dir", type=Path, metavar="DIR",
                        help="where messages wait for the collector (default "
                             r"%%LOCALAPPDATA%%\collector-bridge on Windows, "
                             "~/.local/state/collector-bridge elsewhere)")
    bridge.add_argument("--reconnect-interval", type=types.positive_float, default=3.0,
                        metavar="SECONDS", help="wait between tries to reach the game "
                                                "(default 3)")
    bridge.add_argument("--batch-max-events", type=types.positive_int, default=200, metavar="N",
                        help="events per request at most (default 200)")
    bridge.add_argument("--batch-max-delay", type=types.positive_float, default=0.25,
                        metavar="SECONDS",
                        help="how long an event may wait for its batch (default 0.25)")
    bridge.add_argument("--status-interval", type=types.positive_float, default=10.0,
                        metavar="SECONDS",
                        help="seconds between status log lines when not on a terminal")
    bridge.add_argument("--show-dead", action="store_true",
                        help="print the batches the collector refused (JSON lines) and exit")
    bridge.set_defaults(func=_cmd_bridge)

    replay = subparsers.add_parser(
        "replay", help="send a recording to a collector",
        description="Send a recording (raw socket bytes or JSON lines, detected) to a "
                    "collector at recorded speed, a multiple of it, or as fast as possible.")
    replay.add_argument("file", type=Path, metavar="FILE")
    _add_collector_options(replay, required=True)
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=types.positive_float, default=1.0, metavar="X",
                      help="a multiple of the recorded speed (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    replay.add_argument("--rate", type=types.positive_float, default=DEFAULT_RATE,
                        metavar="PER_SECOND",
                        help="messages per second of the recording when its lines carry no "
                             f"time (default {DEFAULT_RATE:g} = PacketSendRate 60 + events)")
    replay.add_argument("--source", metavar="NAME",
                        help="X-Source to send (default replay-<random>)")
    replay.set_defaults(func=_cmd_replay)

    rec = subparsers.add_parser(
        "record", help="write the game's Stats API stream to a file",
        description="Record one game connection, until the game closes it, --duration "
                    "or Ctrl-C.")
    rec.add_argument("--game", default="127.0.0.1:49123", metavar="HOST:PORT")
    rec.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    rec.add_argument("--jsonl", action="store_true",
                     help="one message per line instead of the raw bytes")
    rec.add_argument("--timestamps", action="store_true",
                     help="with --jsonl: wrap each line as {recorded_at, message}")
    rec.add_argument("--duration", type=types.positive_float, metavar="SECONDS",
                     help="stop after this long")
    rec.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     default="info")
    rec.set_defaults(func=_cmd_record)


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token).strip()
    path: Path | None = args.token_file
    return None if path is None else read_token_file(path, "--token-file")


def _url(args: argparse.Namespace) -> str:
    from collector.bridge.poster import events_url

    if not args.to:
        raise ConfigError("--to URL is required (the collector, e.g. http://homeserver:8765)")
    try:
        events_url(args.to)
    except ValueError as exc:
        raise ConfigError(f"--to: {exc}") from None
    return str(args.to)


def _game(text: str) -> tuple[str, int]:
    from collector.bridge.relay import parse_host_port

    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise ConfigError(f"--game: {exc}") from None


def _output(level: str) -> Any:
    """Logging to stdout; on a terminal also a status line that log lines do not garble."""
    from collector.console import StatusLine, status_line_filter
    from collector.logs import configure_logging

    configure_logging(level, "auto", stream=sys.stdout)
    if not sys.stdout.isatty():
        return None
    status = StatusLine(sys.stdout)
    for handler in logging.getLogger().handlers:
        handler.addFilter(status_line_filter(status))
    return status


def _cmd_bridge(args: argparse.Namespace) -> int:
    from collector.bridge.relay import BridgeConfig, run_bridge
    from collector.bridge.spool import default_spool_dir

    host, port = _game(args.game)
    spool_dir: Path = args.spool_dir or default_spool_dir()
    if args.show_dead:
        return _show_dead(spool_dir)
    config = BridgeConfig(
        url=_url(args), token=_token(args), spool_dir=spool_dir, game_host=host,
        game_port=port, reconnect_interval=args.reconnect_interval,
        batch_max_events=args.batch_max_events, batch_max_delay=args.batch_max_delay,
        backoff_cap=args.max_backoff, status_interval=args.status_interval,
    )
    status = _output(args.log_level)
    asyncio.run(run_bridge(config, status_line=status, handle_signals=True))
    return 0


def _show_dead(spool_dir: Path) -> int:
    import orjson

    from collector.bridge.spool import Spool

    async def dump() -> list[bytes]:
        spool = Spool(spool_dir)
        await spool.open()
        try:
            letters = await spool.dead_letters()
        finally:
            await spool.close()
        return [orjson.dumps({
            "key": d.batch.key, "source": d.batch.source, "sequence": d.batch.sequence,
            "status": d.status, "detail": d.detail, "failed_at": d.failed_at,
            "events": [orjson.Fragment(e) for e in d.batch.events],
        }) for d in letters]

    from collector.logs import configure_logging

    configure_logging("warning", "auto", stream=sys.stderr)
    for line in asyncio.run(dump()):
        sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from collector.bridge.replay import replay

    path: Path = args.file
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    url, token = _url(args), _token(args)
    status = _output(args.log_level)
    summary = asyncio.run(replay(
        path, url, token=token, rate=args.rate, speed=args.speed, fast=args.fast,
        source=args.source, backoff_cap=args.max_backoff, status_line=status,
    ))
    return 1 if summary.set_aside else 0


def _cmd_record(args: argparse.Namespace) -> int:
    from collector.bridge.replay import record

    host, port = _game(args.game)
    if args.timestamps and not args.jsonl:
        raise ConfigError("--timestamps needs --jsonl (a raw recording is the socket's bytes)")
    status = _output(args.log_level)
    record(host, port, args.output, jsonl=args.jsonl, timestamps=args.timestamps,
           duration=args.duration, status_line=status)
    return 0
