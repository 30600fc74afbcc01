"""systemd integration: sd_notify(3) messages, inherited sockets, the worker's watchdog.

The notify protocol is one datagram per message to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace), holding
newline-separated ``KEY=VALUE`` lines. Socket activation hands listening sockets over
as file descriptors 3, 4, ... with ``$LISTEN_FDS`` and ``$LISTEN_PID`` (sd_listen_fds(3)).
Without those variables everything here does nothing, so the daemon runs the same in a
terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Final

import structlog

from collector.queue import JobQueue
from collector.worker import Worker

log = structlog.get_logger(__name__)

LISTEN_FDS_START: Final = 3
#: Seconds between STATUS= updates.
STATUS_EVERY_S: Final = 5.0
#: Longest grace beyond worker.handler_timeout (and beyond one backoff sleep) before the
#: worker counts as stuck: the worker's own timer cancels a slow handler within a second,
#: and a cancelled handler may need a moment to unwind.
STUCK_MARGIN_S: Final = 10.0


def stuck_margin(handler_timeout: float) -> float:
    """Grace for a handler call past its timeout: half the timeout, from 1 s to 10 s."""
    return min(STUCK_MARGIN_S, max(1.0, handler_timeout / 2))


class Notifier:
    """Sends sd_notify messages; a no-op when the service manager did not ask for them."""

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self.watchdog_s = watchdog_s
        self._failed = False
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for $NOTIFY_SOCKET, with the ping interval from $WATCHDOG_USEC."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_s=watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; False when it could not be sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            # The manager went away or its queue is full: the daemon carries on; say it once.
            if not self._failed:
                log.warning("sd_notify_failed", error=exc.strerror or str(exc))
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        """Start-up is complete: the socket listens and recovery is done."""
        return self.send("READY=1", _status(status))

    def status(self, text: str) -> bool:
        """A one-line state shown by `systemctl status`."""
        return self.send(_status(text))

    def watchdog(self) -> bool:
        """Keep-alive ping for WatchdogSec=."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        """Shutdown has begun."""
        return self.send("STOPPING=1", _status(status))

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line, whatever the text holds


def watchdog_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout asked for by $WATCHDOG_USEC (for this process), else None."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        value = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets passed by socket activation (sd_listen_fds), in order; [] if none.

    The variables are removed afterwards, as sd_listen_fds(unset_environment=1) does, so
    that a child process never takes them for its own.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not pid or not count:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


@dataclass(slots=True)
class WorkerHealth:
    """Tells whether the worker still makes progress; WATCHDOG=1 is sent only while it does.

    Stuck means: the worker task is gone; or one handler call has run past
    ``handler_timeout + margin`` (the worker's own timer failed to stop it); or jobs are
    pending but nothing happened for longer than the longest backoff sleep plus margin.
    """

    handler_timeout: float
    backoff_cap: float
    margin: float
    _seen: tuple[int, int, int] = (-1, -1, -1)
    _active_at: float = field(default_factory=time.monotonic)

    def problem(self, worker: Worker, pending: int, *, now: float | None = None) -> str | None:
        """Why the worker counts as stuck, or None while it is healthy."""
        now = time.monotonic() if now is None else now
        if not worker.running:
            return "worker task is not running"
        busy = worker.busy_for
        if busy is not None and busy > self.handler_timeout + self.margin:
            return (f"a handler call has run for {busy:.0f} s "
                    f"(worker.handler_timeout {self.handler_timeout:g} s)")
        c = worker.counters
        seen = (c.processed, c.retried, c.dead_lettered)
        if seen != self._seen or busy is not None or pending == 0:
            self._seen = seen
            self._active_at = now
            return None
        idle = now - self._active_at
        if idle > self.backoff_cap + self.margin:
            return f"{pending} jobs pending and no progress for {idle:.0f} s"
        return None


async def queue_status(queue: JobQueue) -> str:
    """The STATUS= text: queue depth, dead letters, processed total, oldest pending age."""
    try:
        stats = await queue.stats()
    except Exception as exc:  # noqa: BLE001 - a status line must not stop the pings
        return f"queue: numbers unavailable ({type(exc).__name__})"
    text = (f"queue: {stats.pending + stats.in_flight} pending, {stats.dead} dead, "
            f"{stats.processed_total} processed")
    if stats.oldest_pending_age_s is not None:
        text += f", oldest {stats.oldest_pending_age_s:.0f} s"
    return text


async def heartbeat(
    notifier: Notifier,
    queue: JobQueue,
    worker: Worker,
    health: WorkerHealth,
    *,
    status_every: float = STATUS_EVERY_S,
) -> None:
    """Send STATUS= every `status_every` s and WATCHDOG=1 while the worker is healthy."""
    wd = notifier.watchdog_s
    # sd_watchdog_enabled(3): ping at half the timeout.
    tick = status_every if wd is None else min(status_every, wd / 2)
    last_status = -status_every
    reported: str | None = None
    while True:
        now = time.monotonic()
        problem = health.problem(worker, queue.pending, now=now)
        if problem != reported:
            if problem is None:
                log.info("worker_recovered")
            else:
                log.error("worker_stuck", reason=problem, watchdog=wd is not None)
            reported = problem
        if wd is not None and problem is None:
            notifier.watchdog()
        if problem is not None or now - last_status >= status_every:
            text = await queue_status(queue)
            notifier.status(text if problem is None else f"STUCK: {problem}; {text}")
            last_status = now
        await asyncio.sleep(tick)


@contextlib.asynccontextmanager
async def service_notifier(
    queue: JobQueue,
    worker: Worker,
    *,
    handler_timeout: float,
    backoff_cap: float,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Notifier]:
    """A notifier for the app's life, with its STATUS/WATCHDOG heartbeat task running."""
    notifier = Notifier.from_environ(environ)
    task: asyncio.Task[None] | None = None
    if notifier.enabled:
        health = WorkerHealth(handler_timeout=handler_timeout, backoff_cap=backoff_cap,
                              margin=stuck_margin(handler_timeout))
        task = asyncio.create_task(heartbeat(notifier, queue, worker, health),
                                   name="collector-sd-heartbeat")
        log.info("sd_notify_enabled", watchdog_s=notifier.watchdog_s)
    try:
        yield notifier
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        notifier.close()
