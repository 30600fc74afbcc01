"""The game-to-collector bridge: read the Stats API socket, spool, post in order.

Runs on the gaming PC (usually Windows): pure asyncio on the default event loop, aiohttp's
client, persist-queue for the spool; no uvloop.

    game socket ─▶ JsonStreamSplitter ─▶ Batcher ─▶ Spool (disk) ─▶ Poster ─▶ collector

* One connection to the game at a time; while the game is closed the bridge tries again
  every ``reconnect_interval`` seconds. Each connection is a new source
  (``X-Source: bridge-<host>-<run>-<n>``) numbering its messages from 1 (``X-Sequence``).
* The Batcher closes a batch at ``batch_max_events`` events, ``batch_max_bytes`` bytes or
  ``batch_max_delay`` seconds after its first event, whichever comes first.
* Every closed batch is committed to the spool before it is sent, so a batch is never
  only in memory once closed. The sender posts the spool's oldest batch, one request in
  flight, and removes it only once the collector answered 2xx.
* Each batch has an ``Idempotency-Key`` derived from its source, first sequence and size:
  a retry after a lost answer is answered from the server's memory, not stored twice.
* Failures: connection errors, 408, 429 and 5xx are retried with exponential backoff
  (or after ``Retry-After``), forever. 401/403/404/405/415 say the bridge is
  misconfigured (or the server too old), not that the batch is bad: also retried (at the
  backoff cap), loudly, so that a wrong token never empties the spool; so is an https://
  collector whose certificate the bridge does not trust (``ssl_context``). Any other 4xx
  refuses the batch: a 400 or 413 on a batch of several events splits it in halves
  (each with its own key) to find the culprit; what is still refused alone goes to the
  spool's dead letters and the line moves on.
"""

import asyncio
import contextlib
import re
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import structlog

from collector.bridge.batcher import Batcher
from collector.bridge.failures import os_reason
from collector.bridge.jsonstream import DEFAULT_MAX_OBJECT_BYTES, JsonStreamSplitter
from collector.bridge.poster import Poster, events_url
from collector.bridge.spool import Batch, Spool
from collector.console import StatusLine

log = structlog.get_logger(__name__)

DEFAULT_GAME_PORT: Final = 49123
_READ_SIZE: Final = 65536


log = structlog.get_logger(__name__)


def parse_host_port(text: str, *, default_port: int = DEFAULT_GAME_PORT) -> tuple[str, int]:
    """`HOST:PORT`, `HOST`, `[v6]:PORT` -> (host, port)."""
    text = text.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 < port <= 65535:
        raise ValueError(f"not a port number: {port}")
    return host, port


def _host_label() -> str:
    label = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:32]
    return label.lower() or "host"


# -- batching -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConfig:
    """Everything `collector bridge` takes."""

    url: str
    spool_dir: Path
    game_host: str = "127.0.0.1"
    game_port: int = DEFAULT_GAME_PORT
    token: str | None = field(default=None, repr=False)
    #: How to check an https:// collector's certificate (poster.client_ssl: a private CA
    #: or a self-signed certificate); None: the system's trust store.
    ssl_context: ssl.SSLContext | None = None
    reconnect_interval: float = 3.0
    connect_timeout: float = 5.0
    batch_max_events: int = 200
    batch_max_bytes: int = 512 * 1024
    batch_max_delay: float = 0.25
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    request_timeout: float = 30.0
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    #: Seconds between status log lines when the status is not shown on a terminal.
    status_interval: float = 10.0
    #: On stop, how long to wait for the spool to empty (only while the collector answers).
    drain_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class BridgeSummary:
    """Counters of one bridge run."""

    connections: int
    received: int
    sent: int
    spooled: int
    set_aside: int
    dropped_bytes: int
    failed_attempts: int


class Bridge:
    """Reader, spooler, sender and status report of one run, on one spool."""

    def __init__(
        self,
        config: BridgeConfig,
        spool: Spool,
        session: aiohttp.ClientSession,
        *,
        status_line: StatusLine | None = None,
    ) -> None:
        self._config = config
        self._spool = spool
        self._status_line = status_line
        self._closed: asyncio.Queue[Batch | asyncio.Future[None] | None] = asyncio.Queue()
        self._batcher = Batcher(
            self._closed.put_nowait, max_events=config.batch_max_events,
            max_bytes=config.batch_max_bytes, max_delay=config.batch_max_delay,
        )
        self._poster = Poster(
            session, events_url(config.url), token=config.token,
            backoff_base=config.backoff_base, backoff_cap=config.backoff_cap,
            request_timeout=config.request_timeout,
        )
        self._run_id = secrets.token_hex(4)
        self._host = _host_label()
        self.connections = 0
        self.connected = False
        self.source: str | None = None
        self.received = 0
        self.dropped_bytes = 0
        self._spool_failing = False

    def _new_source(self) -> str:
        self.connections += 1
        return f"bridge-{self._host}-{self._run_id}-{self.connections}"

    def summary(self) -> BridgeSummary:
        """The counters so far."""
        return BridgeSummary(
            connections=self.connections, received=self.received,
            sent=self._poster.counters.sent_events, spooled=self._spool.pending_events,
            set_aside=self._poster.counters.set_aside_events, dropped_bytes=self.dropped_bytes,
            failed_attempts=self._poster.counters.failed_attempts,
        )

    def status_text(self) -> str:
        """The one-line status: game, received, sent, spooled, collector."""
        game = "connected" if self.connected else "waiting"
        collector = self._poster.state
        if self._poster.reason and collector != "ok":
            collector += f" ({self._poster.reason})"
        if self._spool_failing:
            collector += ", SPOOL WRITE FAILING"
        text = (f"game {game} | received {self.received} | "
                f"sent {self._poster.counters.sent_events} | "
                f"spooled {self._spool.pending_events} | collector {collector}")
        if self._spool.dead:
            text += f" | set aside {self._spool.dead} batches"
        return text

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (or the task is cancelled), then shut down in order."""
        reader = asyncio.create_task(self._read_game(), name="bridge-reader")
        spooler = asyncio.create_task(self._spool_batches(), name="bridge-spooler")
        sender = asyncio.create_task(self._send(), name="bridge-sender")
        reporter = asyncio.create_task(self._report(), name="bridge-status")
        stopper = asyncio.create_task(stop.wait(), name="bridge-stop")
        workers = [reader, spooler, sender, reporter]
        try:
            done, _ = await asyncio.wait([*workers, stopper],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()  # a worker never returns: this raises what it raised
                    raise RuntimeError(f"{task.get_name()} stopped")
        finally:
            stopper.cancel()
            await self._shutdown(reader, spooler, sender, reporter)

    async def _shutdown(self, reader: asyncio.Task[None], spooler: asyncio.Task[None],
                        sender: asyncio.Task[None], reporter: asyncio.Task[None]) -> None:
        """Stop reading, commit what was read, give the sender a moment, stop the rest."""
        await _finish(reader)
        self._batcher.flush()
        if not spooler.done():
            self._closed.put_nowait(None)
            await asyncio.wait([spooler])
        await _finish(spooler)
        if self._spool.pending_batches and not sender.done() and self._poster.state == "ok":
            drained = asyncio.create_task(self._spool.wait_empty())
            await asyncio.wait([drained, sender], timeout=self._config.drain_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        await _finish(sender)
        await _finish(reporter)
        summary = self.summary()
        if self._status_line is not None:
            self._status_line.show(self.status_text())
            self._status_line.done()
        log.info("bridge_stopped", connections=summary.connections, received=summary.received,
                 sent=summary.sent, spooled=summary.spooled, set_aside=summary.set_aside)

    # -- tasks -----------------------------------------------------------------------------

    async def _read_game(self) -> None:
        cfg = self._config
        game = f"{cfg.game_host}:{cfg.game_port}"
        waiting_logged = False
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation
                # that comes as the connection attempt fails, and the bridge then went on
                # retrying after SIGTERM instead of stopping.
                async with asyncio.timeout(cfg.connect_timeout):
                    reader, writer = await asyncio.open_connection(cfg.game_host,
                                                                   cfg.game_port)
            except (OSError, TimeoutError) as exc:
                if not waiting_logged:
                    log.info("game_unreachable", game=game, error=os_reason(exc),
                             retry_every_s=cfg.reconnect_interval)
                    waiting_logged = True
                await asyncio.sleep(cfg.reconnect_interval)
                continue
            waiting_logged = False
            await self._relay(game, reader, writer)
            await asyncio.sleep(cfg.reconnect_interval)

    async def _relay(self, game: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """Read one game connection to its end; everything read is spooled before we return."""
        source = self._new_source()
        splitter = JsonStreamSplitter(max_object_bytes=self._config.max_object_bytes)
        self._batcher.start(source)
        self.connected, self.source = True, source
        received_before = self.received
        log.info("game_connected", game=game, source=source)
        resyncs = 0
        try:
            while True:
                try:
                    chunk = await reader.read(_READ_SIZE)
                except OSError as exc:
                    log.warning("game_read_failed", source=source, error=os_reason(exc))
                    chunk = b""
                objects = splitter.feed(chunk) if chunk else splitter.close()
                for raw in objects:
                    self._batcher.add(raw)
                self.received += len(objects)
                if splitter.resyncs != resyncs:
                    resyncs = splitter.resyncs
                    log.warning("game_stream_garbage", source=source, resyncs=resyncs,
                                dropped_bytes=splitter.dropped_bytes)
                if not chunk:
                    break
        finally:
            self.connected = False
            self.dropped_bytes += splitter.dropped_bytes
            self._batcher.flush()
            writer.close()
        # Wait until the spooler has committed this connection's last batch.
        spooled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed.put_nowait(spooled)
        await spooled
        log.info("game_disconnected", source=source, received=self.received - received_before,
                 dropped_bytes=splitter.dropped_bytes, spooled=self._spool.pending_events)

    async def _spool_batches(self) -> None:
        while True:
            item = await self._closed.get()
            if item is None:
                return
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(None)
                continue
            attempt = 0
            while True:
                try:
                    await self._spool.put(item)
                except Exception as exc:  # noqa: BLE001 - the disk may come back; keep the batch
                    attempt += 1
                    self._spool_failing = True
                    if attempt == 1 or attempt % 60 == 0:
                        log.error("spool_write_failed", error=str(exc), attempt=attempt,
                                  waiting_batches=self._closed.qsize() + 1)
                    await asyncio.sleep(1.0)
                    continue
                self._spool_failing = False
                break

    async def _send(self) -> None:
        while True:
            item = await self._spool.next_batch()
            dead = await self._poster.deliver(item.batch, item.body)
            await self._spool.settle(item, dead)

    async def _report(self) -> None:
        if self._status_line is not None:
            while True:
                self._status_line.show(self.status_text())
                await asyncio.sleep(0.25)
        while True:
            await asyncio.sleep(self._config.status_interval)
            log.info("bridge_status", connected=self.connected, source=self.source,
                     received=self.received, sent=self._poster.counters.sent_events,
                     spooled=self._spool.pending_events, collector=self._poster.state,
                     set_aside_batches=self._spool.dead)


async def _finish(task: asyncio.Task[None]) -> None:
    """Cancel `task` unless done, wait for it, and log what it raised."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.exception("bridge_task_failed", task=task.get_name())


@contextlib.contextmanager
def _stop_on_sigterm(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM sets `stop` where the loop supports signal handlers (not on Windows)."""
    loop = asyncio.get_running_loop()
    installed = False
    if sys.platform != "win32":
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


async def run_bridge(
    config: BridgeConfig,
    *,
    stop: asyncio.Event | None = None,
    status_line: StatusLine | None = None,
    handle_signals: bool = False,
) -> BridgeSummary:
    """Run the bridge until `stop` is set (or SIGTERM, or the task is cancelled)."""
    stop = stop or asyncio.Event()
    spool = Spool(config.spool_dir)
    await spool.open()
    try:
        connector = aiohttp.TCPConnector(ssl=config.ssl_context or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            bridge = Bridge(config, spool, session, status_line=status_line)
            log.info("bridge_started", game=f"{config.game_host}:{config.game_port}",
                     collector=events_url(config.url), spool=str(spool.path),
                     spooled=spool.pending_events)
            if handle_signals:
                with _stop_on_sigterm(stop):
                    await bridge.run(stop)
            else:
                await bridge.run(stop)
            return bridge.summary()
    finally:
        await spool.close()
