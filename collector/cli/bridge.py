"""Sub-commands `bridge`, `replay` and `record`: from the game to the collector.

These run on the gaming PC (Windows included): plain asyncio, no uvloop.

Every path ends in one line and an exit code (docs/cli.md, "Exit codes"): the command
line and the files it names to be read are checked first (2), then the output file of
`record` (1, like `export -o`), before any work. `bridge` and `record` run until they
are stopped, so Ctrl-C and SIGTERM end them cleanly with 0; `replay` ends on its own,
so a replay stopped early is interrupted: 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from collector.cli import args as types
from collector.config import check_token, read_token_file
from collector.errors import ConfigError, StartupError

EXIT_FAILED: Final = 1
#: The header limit of the collector (collector/server/ingest.py) for X-Source.
_MAX_SOURCE: Final = 256


def _add_collector_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--to", required=required, metavar="URL",
                        help="the collector, e.g. http://homeserver:8765 (or https://)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token of the collector (visible in the "
                                       "process list: prefer --token-file)")
    token.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the bearer token")
    parser.add_argument("--ca-file", type=types.ca_file, metavar="FILE", dest="ssl_context",
                        help="PEM certificate to trust for an https:// collector: its CA, or "
                             "its self-signed certificate (default: the system's trust store)")
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
    replay.add_argument("--give-up-after", type=types.positive_float, default=30.0,
                        metavar="SECONDS",
                        help="end with exit 1 when a batch is still not taken this long "
                             "after its first try: the collector cannot be reached or is "
                             "failing (default 30)")
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
    path: Path | None = args.token_file
    if args.token is not None:
        token, what = str(args.token).strip(), "--token"
        if not token:
            raise ConfigError("--token is empty")
    elif path is not None:
        if not path.exists():
            raise ConfigError(f"--token-file: no such file {path}")
        return read_token_file(path, "--token-file")
    else:
        return None
    return check_token(token, what)


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


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    """The one line of a failed command, on stderr; returns its exit code."""
    sys.stdout.flush()  # the log lines before it
    print(f"collector: error: {message}", file=sys.stderr)
    return code


def _recording(path: Path) -> None:
    """A recording to read: a regular file that can be opened (else ConfigError, exit 2)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({_strerror(exc)})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path} is a folder, not a recording")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path} is not a regular file (a recording is a file)")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({_strerror(exc)})") from None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _source(text: str | None) -> str | None:
    if text is None:
        return None
    source = text.strip()
    if not source or len(source) > _MAX_SOURCE or not source.isprintable():
        given = f"not {text!r}" if len(text) <= 40 else f"{len(source)} given"
        raise ConfigError(f"--source: 1 to {_MAX_SOURCE} printable characters expected, "
                          f"{given}")
    return source


def _cmd_bridge(args: argparse.Namespace) -> int:
    from collector.bridge.relay import BridgeConfig, run_bridge
    from collector.bridge.spool import default_spool_dir

    host, port = _game(args.game)
    spool_dir: Path = args.spool_dir or default_spool_dir()
    if args.show_dead:
        return _show_dead(spool_dir)
    config = BridgeConfig(
        url=_url(args), token=_token(args), ssl_context=args.ssl_context, spool_dir=spool_dir,
        game_host=host, game_port=port, reconnect_interval=args.reconnect_interval,
        batch_max_events=args.batch_max_events, batch_max_delay=args.batch_max_delay,
        backoff_cap=args.max_backoff, status_interval=args.status_interval,
    )
    status = _output(args.log_level)
    # Ctrl-C: asyncio.run cancels the bridge, which commits what it read to the spool
    # and logs bridge_stopped, then raises KeyboardInterrupt. A bridge runs until it is
    # stopped: that is its clean end, 0 (as SIGTERM).
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_bridge(config, status_line=status, handle_signals=True))
    return 0


def _show_dead(spool_dir: Path) -> int:
    import orjson

    from collector.bridge.spool import SPOOL_FILE, Spool

    if not (spool_dir / SPOOL_FILE).is_file():  # do not create a spool to show it empty
        return _fail(f"no bridge spool in {spool_dir} (the bridge never ran with this "
                     "--spool-dir)")

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


@contextlib.contextmanager
def _cancel_on_signals(received: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM cancel the running task (their numbers go to `received`).

    Where the loop takes no signal handlers (Windows), asyncio.run's own Ctrl-C handling
    cancels the task the same way (and SIGTERM ends the process)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    installed: list[int] = []

    def cancel(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for number in (int(signal.SIGINT), int(signal.SIGTERM)):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(number, cancel, number)
            installed.append(number)
    try:
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)


def _cmd_replay(args: argparse.Namespace) -> int:
    from collector.bridge.failures import DeliveryFailed
    from collector.bridge.replay import ReplayError, ReplayInterrupted, ReplaySummary, replay

    path: Path = args.file
    _recording(path)
    url, token, source = _url(args), _token(args), _source(args.source)
    status = _output(args.log_level)
    received: list[int] = []

    async def run() -> ReplaySummary:
        with _cancel_on_signals(received):
            return await replay(
                path, url, token=token, ssl_context=args.ssl_context, rate=args.rate,
                speed=args.speed, fast=args.fast,
                source=source, backoff_cap=args.max_backoff,
                give_up_after=args.give_up_after, status_line=status,
            )

    try:
        summary = asyncio.run(run())
    except (DeliveryFailed, ReplayError) as exc:
        return _fail(str(exc))
    except ReplayInterrupted as exc:
        done = exc.summary
        signum = received[0] if received else int(signal.SIGINT)
        sys.stdout.flush()
        print(f"collector: interrupted by {signal.Signals(signum).name}: the collector took "
              f"{done.sent} of the {done.messages} messages read from {path} "
              f"(source {done.source})", file=sys.stderr)
        return 128 + signum
    if summary.set_aside:
        if not summary.sent:
            return _fail(f"the collector refused all {summary.messages} messages of {path}: "
                         f"{summary.refusal}")
        return _fail(f"the collector refused {summary.set_aside} of {summary.messages} "
                     f"messages of {path} and took the other {summary.sent}: "
                     f"{summary.refusal}")
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_record(args: argparse.Namespace) -> int:
    from collector.bridge.replay import RecordError, record

    host, port = _game(args.game)
    if args.timestamps and not args.jsonl:
        raise ConfigError("--timestamps needs --jsonl (a raw recording is the socket's bytes)")
    problem = types.output_problem(args.output)
    if problem is not None:
        raise StartupError(problem)  # exit 1, as `export -o` into an existing file
    status = _output(args.log_level)
    try:
        with _sigterm_interrupts():
            record(host, port, args.output, jsonl=args.jsonl, timestamps=args.timestamps,
                   duration=args.duration, status_line=status)
    except RecordError as exc:
        return _fail(str(exc))
    return 0  # also when stopped by Ctrl-C or SIGTERM: record runs until it is stopped
