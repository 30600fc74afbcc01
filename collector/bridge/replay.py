"""Recordings of the game's Stats API: write one (`collector record`), send one (`replay`).

A recording is either the raw bytes of the game's socket (objects back to back, no
delimiter) or JSON lines (one object per line). Both go through the same splitter, so
`replay` needs no format flag. The game stamps nothing with a time: a replay is paced at
``rate`` messages per second (62 ≈ PacketSendRate 60 plus events), unless lines carry a
time of their own: ``record --jsonl --timestamps`` writes each message as
``{"recorded_at": UNIX_SECONDS, "message": {...}}``, and a replay of such lines keeps
their spacing (divided by ``speed``) and sends the inner message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import aiohttp
import orjson
import structlog

from collector.bridge.batcher import Batcher
from collector.bridge.jsonstream import DEFAULT_MAX_OBJECT_BYTES, JsonStreamSplitter
from collector.bridge.poster import Poster, events_url
from collector.bridge.spool import Batch
from collector.console import ProgressBar, StatusLine

log = structlog.get_logger(__name__)

DEFAULT_RATE: Final = 62.0
_READ_SIZE: Final = 1 << 16
_WRAPPER_PREFIX: Final = b'{"recorded_at"'
_MESSAGE_KEY: Final = b',"message":'
_QUEUED_BATCHES: Final = 4  # batches waiting for the sender before the reader pauses
_PROGRESS_EVERY_S: Final = 0.2


def unwrap(raw: bytes) -> tuple[float | None, bytes]:
    """A recorded line -> (its time if it carries one, the message's bytes)."""
    if not raw.startswith(_WRAPPER_PREFIX):
        return None, raw
    value = orjson.loads(raw)
    stamp, message = value.get("recorded_at"), value.get("message")
    if (set(value) != {"recorded_at", "message"} or not isinstance(message, dict)
            or not isinstance(stamp, int | float) or isinstance(stamp, bool)):
        return None, raw
    # Keep the message's bytes as recorded when the line is laid out as wrap() writes it.
    start = raw.find(_MESSAGE_KEY)
    if start > 0 and raw.endswith(b"}"):
        inner = raw[start + len(_MESSAGE_KEY) : -1]
        with contextlib.suppress(orjson.JSONDecodeError):
            if orjson.loads(inner) == message:
                return float(stamp), inner
    return float(stamp), orjson.dumps(message)


def wrap(raw: bytes, recorded_at: float) -> bytes:
    """One message as a timestamped JSON line (the message's bytes kept as received)."""
    return b'{"recorded_at":' + orjson.dumps(round(recorded_at, 6)) + b',"message":' + raw + b"}"


def detect_format(head: bytes) -> str:
    """"jsonl" when the first object is followed by a line break, else "stream"."""
    splitter = JsonStreamSplitter()
    objects = splitter.feed(head)
    if not objects:
        return "stream"
    start = head.find(objects[0])
    after = head[start + len(objects[0]) : start + len(objects[0]) + 2]
    return "jsonl" if after[:1] in (b"\n", b"\r") else "stream"


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What one replay did."""

    format: str
    source: str
    messages: int
    sent: int
    set_aside: int
    dropped_bytes: int
    seconds: float


def _progress_note(messages: int, sent: int, started: float) -> str:
    rate = messages / max(time.monotonic() - started, 1e-6)
    return f"{messages} messages | sent {sent} | {rate:.1f} msg/s"


async def replay(
    path: Path,
    url: str,
    *,
    token: str | None = None,
    rate: float = DEFAULT_RATE,
    speed: float = 1.0,
    fast: bool = False,
    source: str | None = None,
    batch_max_events: int = 200,
    batch_max_delay: float = 0.25,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    status_line: StatusLine | None = None,
) -> ReplaySummary:
    """Send the recording at `path` to the collector at `url`; returns when all is settled."""
    if rate <= 0 or speed <= 0:
        raise ValueError("rate and speed must be positive")
    source = source or f"replay-{secrets.token_hex(4)}"
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    size = (await asyncio.to_thread(path.stat)).st_size
    with await asyncio.to_thread(path.open, "rb") as handle:
        head = await asyncio.to_thread(handle.read, _READ_SIZE)
        fmt = detect_format(head)
        log.info("replay_started", file=str(path), format=fmt, bytes=size, source=source,
                 collector=events_url(url),
                 pace="fast" if fast else f"{rate * speed:g} msg/s")
        batches: asyncio.Queue[Batch | None] = asyncio.Queue()
        batcher = Batcher(batches.put_nowait, max_events=batch_max_events,
                          max_delay=batch_max_delay)
        batcher.start(source)
        async with aiohttp.ClientSession() as session:
            poster = Poster(session, events_url(url), token=token, backoff_base=backoff_base,
                            backoff_cap=backoff_cap)
            sender = asyncio.create_task(_send_all(batches, poster), name="replay-sender")
            progress = ProgressBar(status_line, path.name, size) if status_line else None
            splitter = JsonStreamSplitter(max_object_bytes=DEFAULT_MAX_OBJECT_BYTES)
            messages = 0
            done_bytes = 0
            t0 = loop.time()
            first_stamp: float | None = None  # set when the first message carries a time
            chunk = head
            try:
                while True:
                    done_bytes += len(chunk)
                    objects = splitter.feed(chunk) if chunk else splitter.close()
                    for raw in objects:
                        stamp, message = unwrap(raw)
                        if messages == 0:
                            first_stamp = stamp
                        if not fast:
                            if first_stamp is None:
                                due = t0 + messages / (rate * speed)
                            elif stamp is not None:
                                due = t0 + (stamp - first_stamp) / speed
                            else:
                                due = loop.time()  # a line without a time: right after
                            delay = due - loop.time()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        batcher.add(message)
                        messages += 1
                        if batches.qsize() >= _QUEUED_BATCHES:
                            await batches.join()
                        if progress:
                            progress.update(done_bytes, _progress_note(
                                messages, poster.counters.sent_events, started))
                    if not chunk:
                        break
                    chunk = await asyncio.to_thread(handle.read, _READ_SIZE)
                batcher.flush()
                batches.put_nowait(None)
                await sender
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                if progress:
                    progress.done(done_bytes, _progress_note(
                        messages, poster.counters.sent_events, started))
    summary = ReplaySummary(
        format=fmt, source=source, messages=messages, sent=poster.counters.sent_events,
        set_aside=poster.counters.set_aside_events, dropped_bytes=splitter.dropped_bytes,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info("replay_done", file=str(path), format=fmt, source=source, messages=messages,
             sent=summary.sent, set_aside=summary.set_aside,
             dropped_bytes=summary.dropped_bytes, seconds=summary.seconds)
    return summary


async def _send_all(batches: asyncio.Queue[Batch | None], poster: Poster) -> None:
    while True:
        batch = await batches.get()
        try:
            if batch is None:
                return
            await poster.deliver(batch)
        finally:
            batches.task_done()


# -- record -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What one recording holds."""

    messages: int
    bytes: int
    seconds: float


def record(
    host: str,
    port: int,
    out: Path,
    *,
    jsonl: bool = False,
    timestamps: bool = False,
    duration: float | None = None,
    reconnect_interval: float = 3.0,
    status_line: StatusLine | None = None,
    clock: Callable[[], float] = time.time,
) -> RecordSummary:
    """Write one game connection's stream to `out` until the game closes it (or `duration`).

    Raw mode writes the bytes exactly as received; `jsonl` writes one message per line
    (as received), `timestamps` wraps each line with the time it was read.
    """
    game = f"{host}:{port}"
    waiting_logged = False
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
            break
        except OSError as exc:
            if not waiting_logged:
                log.info("game_unreachable", game=game, error=str(exc),
                         retry_every_s=reconnect_interval)
                waiting_logged = True
            time.sleep(reconnect_interval)
    log.info("recording", game=game, file=str(out), format="jsonl" if jsonl else "stream")
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    splitter = JsonStreamSplitter()
    messages = 0
    written = 0
    shown = 0.0
    sock.settimeout(0.5)  # so Ctrl-C is seen on Windows too
    with sock, out.open("wb") as handle:
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    chunk = sock.recv(_READ_SIZE)
                except TimeoutError:
                    continue
                except OSError as exc:
                    log.warning("game_read_failed", error=str(exc))
                    chunk = b""
                objects = splitter.feed(chunk) if chunk else splitter.close()
                messages += len(objects)
                written += _write(handle, chunk, objects, jsonl=jsonl,
                                  stamp=clock() if timestamps else None)
                if status_line and time.monotonic() - shown >= _PROGRESS_EVERY_S:
                    shown = time.monotonic()
                    status_line.show(f"recording {game} -> {out.name}: {messages} messages, "
                                     f"{written / 1e6:.1f} MB")
                if not chunk:
                    break
        finally:
            handle.flush()
            if status_line:
                status_line.show(f"recorded {messages} messages, {written / 1e6:.1f} MB "
                                 f"to {out}")
                status_line.done()
    summary = RecordSummary(messages=messages, bytes=written,
                            seconds=round(time.monotonic() - started, 3))
    log.info("recorded", file=str(out), messages=messages, bytes=written,
             seconds=summary.seconds, dropped_bytes=splitter.dropped_bytes)
    return summary


def _write(handle: BinaryIO, chunk: bytes, objects: list[bytes], *, jsonl: bool,
           stamp: float | None) -> int:
    if not jsonl:
        handle.write(chunk)
        return len(chunk)
    size = 0
    for raw in objects:
        line = raw if b"\n" not in raw else orjson.dumps(orjson.loads(raw))
        if stamp is not None:
            line = wrap(line, stamp)
        handle.write(line + b"\n")
        size += len(line) + 1
    return size


__all__ = ["DEFAULT_RATE", "RecordSummary", "ReplaySummary", "detect_format", "record",
           "replay", "unwrap", "wrap"]
