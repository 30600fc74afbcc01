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
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import aiohttp
import orjson
import structlog

from collector.bridge.batcher import Batcher
from collector.bridge.failures import os_reason
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


class ReplayError(Exception):
    """The recording cannot be replayed (it holds no message); the message is one line."""


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
    #: The last answer that set messages aside ("" when none was).
    refusal: str = ""


class ReplayInterrupted(Exception):
    """The replay was cancelled (Ctrl-C, SIGTERM): `summary` says how far it got."""

    def __init__(self, summary: ReplaySummary) -> None:
        super().__init__(f"interrupted after {summary.sent} of {summary.messages} messages "
                         "read were taken by the collector")
        self.summary = summary


class _Progress:
    """The replay's bar: the share of the recording's messages the collector has settled
    (taken, or refused for good), never the bytes read. While the file is still being
    read its number of messages is estimated from the bytes of the messages read so far,
    so the bar reaches 100 % only once the last batch is acknowledged."""

    def __init__(self, line: StatusLine | None, name: str, size: int, poster: Poster) -> None:
        self._bar = ProgressBar(line, name, 0)
        self._size = size
        self._poster = poster
        self._started = time.monotonic()
        self.messages = 0  # read and handed to the batcher
        self.message_bytes = 0  # their bytes as in the file
        self.finished_reading = False

    def read(self, raw: bytes) -> None:
        self.messages += 1
        self.message_bytes += len(raw)
        self.draw()

    def _total(self) -> int:
        if self.finished_reading or not self.message_bytes:
            return self.messages
        estimate = round(self.messages * self._size / self.message_bytes)
        return max(self.messages, estimate)

    def _note(self) -> str:
        counters = self._poster.counters
        rate = counters.sent_events / max(time.monotonic() - self._started, 1e-6)
        note = f"read {self.messages} | sent {counters.sent_events} | {rate:.1f} msg/s"
        if counters.set_aside_events:
            note += f" | set aside {counters.set_aside_events}"
        if self._poster.state in {"retrying", "refusing"} and self._poster.reason:
            note += f" | collector {self._poster.state}: {self._poster.reason}"
        return note

    def draw(self, *, force: bool = False) -> None:
        counters = self._poster.counters
        self._bar.total = self._total()
        self._bar.update(counters.sent_events + counters.set_aside_events, self._note(),
                         force=force)

    def done(self) -> None:
        counters = self._poster.counters
        self._bar.total = self._total()
        self._bar.done(counters.sent_events + counters.set_aside_events, self._note())


async def replay(
    path: Path,
    url: str,
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    rate: float = DEFAULT_RATE,
    speed: float = 1.0,
    fast: bool = False,
    source: str | None = None,
    batch_max_events: int = 200,
    batch_max_delay: float = 0.25,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    give_up_after: float | None = 30.0,
    status_line: StatusLine | None = None,
) -> ReplaySummary:
    """Send the recording at `path` to the collector at `url`; returns when all is settled.

    A replay is one-shot: a collector that refuses every batch (a wrong token or URL)
    ends it at once, and one that cannot be reached ends it after `give_up_after`
    seconds, both with DeliveryFailed. A recording without a single message raises
    ReplayError; a cancelled replay raises ReplayInterrupted. An https:// collector's
    certificate is checked with `ssl_context` (poster.client_ssl), else against the
    system's trust store; one that is not trusted ends the replay at once
    (DeliveryFailed).
    """
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
        splitter = JsonStreamSplitter(max_object_bytes=DEFAULT_MAX_OBJECT_BYTES)
        connector = aiohttp.TCPConnector(ssl=ssl_context or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            poster = Poster(session, events_url(url), token=token, backoff_base=backoff_base,
                            backoff_cap=backoff_cap, give_up_after=give_up_after,
                            stop_on_misconfig=True)
            progress = _Progress(status_line, path.name, size, poster)

            def summary() -> ReplaySummary:
                return ReplaySummary(
                    format=fmt, source=source, messages=progress.messages,
                    sent=poster.counters.sent_events,
                    set_aside=poster.counters.set_aside_events,
                    dropped_bytes=splitter.dropped_bytes,
                    seconds=round(time.monotonic() - started, 3),
                    refusal=poster.last_refusal)

            sender = asyncio.create_task(_send_all(batches, poster, progress.draw),
                                         name="replay-sender")
            t0 = loop.time()
            first_stamp: float | None = None  # set when the first message carries a time
            chunk = head
            try:
                while True:
                    objects = splitter.feed(chunk) if chunk else splitter.close()
                    for raw in objects:
                        if sender.done():
                            sender.result()  # the sender gave up: raise why
                        stamp, message = unwrap(raw)
                        if progress.messages == 0:
                            first_stamp = stamp
                        if not fast:
                            if first_stamp is None:
                                due = t0 + progress.messages / (rate * speed)
                            elif stamp is not None:
                                due = t0 + (stamp - first_stamp) / speed
                            else:
                                due = loop.time()  # a line without a time: right after
                            delay = due - loop.time()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        batcher.add(message)
                        progress.read(raw)
                        if batches.qsize() >= _QUEUED_BATCHES:
                            await _wait_for_sender(batches, sender)
                    if not chunk:
                        break
                    chunk = await asyncio.to_thread(handle.read, _READ_SIZE)
                progress.finished_reading = True
                if progress.messages == 0:
                    raise ReplayError(_no_messages(path, splitter.dropped_bytes))
                batcher.flush()
                batches.put_nowait(None)
                await sender
            except asyncio.CancelledError:
                raise ReplayInterrupted(summary()) from None
            finally:
                batcher.flush()  # (cancels its timer)
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
                if progress.messages:
                    progress.done()
    result = summary()
    log.info("replay_done", file=str(path), format=fmt, source=source,
             messages=result.messages, sent=result.sent, set_aside=result.set_aside,
             dropped_bytes=result.dropped_bytes, seconds=result.seconds)
    if result.dropped_bytes:
        log.warning("recording_has_garbage", file=str(path), dropped_bytes=result.dropped_bytes,
                    note="bytes that are not Stats API messages were skipped")
    return result


def _no_messages(path: Path, dropped: int) -> str:
    if not dropped:
        return f"no Stats API messages in {path} (the file is empty)"
    return f"no Stats API messages in {path} (its {dropped} bytes hold no JSON object)"


async def _wait_for_sender(batches: asyncio.Queue[Batch | None],
                           sender: asyncio.Task[None]) -> None:
    """Wait until the sender took every queued batch, or raise what stopped it."""
    joined = asyncio.ensure_future(batches.join())
    try:
        await asyncio.wait([joined, sender], return_when=asyncio.FIRST_COMPLETED)
    finally:
        joined.cancel()
    if sender.done():
        sender.result()


async def _send_all(batches: asyncio.Queue[Batch | None], poster: Poster,
                    settled: Callable[[], None]) -> None:
    while True:
        batch = await batches.get()
        try:
            if batch is None:
                return
            await poster.deliver(batch)
            settled()
        finally:
            batches.task_done()


# -- record -------------------------------------------------------------------------------


class RecordError(Exception):
    """Nothing could be recorded (the output cannot be written, no game within
    `duration`, a game that sent nothing); the message is one line."""


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What one recording holds."""

    messages: int
    bytes: int
    seconds: float
    #: Stopped by Ctrl-C or SIGTERM (KeyboardInterrupt), not by the game or `duration`.
    interrupted: bool = False
    #: The file was removed because nothing was written to it.
    removed: bool = False


def record(
    host: str,
    port: int,
    out: Path,
    *,
    jsonl: bool = False,
    timestamps: bool = False,
    duration: float | None = None,
    reconnect_interval: float = 3.0,
    connect_timeout: float = 5.0,
    status_line: StatusLine | None = None,
    clock: Callable[[], float] = time.time,
) -> RecordSummary:
    """Write one game connection's stream to `out` until the game closes it, `duration`
    seconds after the start (waiting for the game included) or a KeyboardInterrupt.

    `out` is created first (never overwritten), before anything else: RecordError when
    it cannot be. Raw mode writes the bytes exactly as received; `jsonl` writes one
    message per line (as received), `timestamps` wraps each line with the time it was
    read. A file left empty is removed. RecordError, too, when no game answered within
    `duration`, or the game sent no message at all (unless interrupted: a deliberate
    stop is not a failure).
    """
    game = f"{host}:{port}"
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    try:
        handle = out.open("xb")  # never overwrite an earlier recording
    except FileExistsError:
        raise RecordError(f"{out} exists; choose another file (record never overwrites)"
                          ) from None
    except OSError as exc:
        raise RecordError(f"cannot create {out}: {os_reason(exc)}") from None
    messages = written = 0
    splitter = JsonStreamSplitter()
    interrupted = False
    found = False
    try:
        with handle:
            try:
                sock, why = _connect(host, port, deadline, reconnect_interval, connect_timeout)
                if sock is None:
                    raise RecordError(f"no game at {game} within {duration:g} s ({why}); "
                                      "nothing recorded")
                found = True
                log.info("recording", game=game, file=str(out),
                         format="jsonl" if jsonl else "stream")
                with sock:
                    messages, written, interrupted = _record_connection(
                        sock, handle, splitter, game=game, out=out, deadline=deadline,
                        jsonl=jsonl, timestamps=timestamps, status_line=status_line,
                        clock=clock)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                handle.flush()
                if status_line and found:
                    status_line.show(f"recorded {messages} messages, {written / 1e6:.1f} MB "
                                     f"to {out}")
                    status_line.done()
    finally:
        removed = False
        if written == 0:
            with contextlib.suppress(OSError):
                out.unlink()
                removed = True
    summary = RecordSummary(messages=messages, bytes=written,
                            seconds=round(time.monotonic() - started, 3),
                            interrupted=interrupted, removed=removed)
    if not found:
        log.info("record_stopped", game=game, note="stopped before the game was reached; "
                 "nothing recorded", seconds=summary.seconds)
        return summary
    log.info("recorded", file=str(out), messages=messages, bytes=written,
             seconds=summary.seconds, dropped_bytes=splitter.dropped_bytes,
             interrupted=interrupted, removed_empty_file=removed)
    if messages == 0 and not interrupted:
        ended = ("the time was up" if deadline is not None and time.monotonic() >= deadline
                 else "it closed the connection")
        if removed:
            raise RecordError(f"the game at {game} sent nothing before {ended}; "
                              "nothing recorded")
        raise RecordError(f"the game at {game} sent no complete message before {ended}; "
                          f"its {written} bytes are kept in {out}")
    return summary


def _connect(host: str, port: int, deadline: float | None, reconnect_interval: float,
             connect_timeout: float) -> tuple[socket.socket | None, str]:
    """Connect to the game, trying again until `deadline`: (socket, "") or (None, why)."""
    game = f"{host}:{port}"
    waiting_logged = False
    why = "no time to try"
    while True:
        timeout = connect_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                return None, why
        try:
            return socket.create_connection((host, port), timeout=timeout), ""
        except OSError as exc:
            why = os_reason(exc)
            if not waiting_logged:
                log.info("game_unreachable", game=game, error=why,
                         retry_every_s=reconnect_interval)
                waiting_logged = True
        pause = reconnect_interval
        if deadline is not None:
            pause = min(pause, max(deadline - time.monotonic(), 0.0))
        time.sleep(pause)


def _record_connection(sock: socket.socket, handle: BinaryIO, splitter: JsonStreamSplitter,
                       *, game: str, out: Path, deadline: float | None, jsonl: bool,
                       timestamps: bool, status_line: StatusLine | None,
                       clock: Callable[[], float]) -> tuple[int, int, bool]:
    """Read one game connection into `handle` until it ends, `deadline` or a
    KeyboardInterrupt: (messages, bytes, interrupted). What was read is written."""
    messages = written = 0
    shown = 0.0
    sock.settimeout(0.5)  # so Ctrl-C is seen on Windows too
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                chunk = sock.recv(_READ_SIZE)
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("game_read_failed", game=game, error=os_reason(exc))
                chunk = b""
            objects = splitter.feed(chunk) if chunk else splitter.close()
            messages += len(objects)
            written += _write(handle, chunk, objects, jsonl=jsonl,
                              stamp=clock() if timestamps else None)
            handle.flush()  # on disk as it comes: a killed record keeps what it read
            if status_line and time.monotonic() - shown >= _PROGRESS_EVERY_S:
                shown = time.monotonic()
                status_line.show(f"recording {game} -> {out.name}: {messages} messages, "
                                 f"{written / 1e6:.1f} MB")
            if not chunk:
                break
    except KeyboardInterrupt:
        return messages, written, True
    return messages, written, False


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


__all__ = ["DEFAULT_RATE", "RecordError", "RecordSummary", "ReplayError", "ReplayInterrupted",
           "ReplaySummary", "detect_format", "record", "replay", "unwrap", "wrap"]
