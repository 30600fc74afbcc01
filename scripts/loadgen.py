"""A small closed-loop HTTP/1.1 load generator: scripts/bench.py's filler, and its
stand-in for wrk when wrk is not installed (`bench.py --no-wrk`).

Each of `--connections` keep-alive connections sends one POST, waits for the whole
answer, and sends the next (no pipelining), rotating through the bodies of `--bodies`
(one request body per line). It runs for `--duration` seconds, or until `--requests`
requests have been answered. It prints one line, ``BENCH_RESULT {json}``, in the shape
of bench.py's wrk `done()` hook: requests, duration_us, errors, latency_us, plus the
count of each status code.

Run it in a process of its own (bench.py does): the load must not share a core with
the server under test. It uses uvloop when installed and `asyncio.Protocol`s, so one
core answers several times the request rate of the servers measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

_HEAD_END = b"\r\n\r\n"
_WATCHDOG_S = 0.25
_RECONNECT_DELAY_S = 0.05


class _Stats:
    """Everything measured, shared by the connections."""

    def __init__(self) -> None:
        self.latencies = array("d")  # seconds, one per answered request
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter({"connect": 0, "read": 0, "write": 0,
                                             "status": 0, "timeout": 0})
        self.bytes = 0


class _Run:
    """The shared plan: the requests to send, when to stop, how many remain."""

    def __init__(self, requests: Sequence[bytes], *, deadline: float | None,
                 total: int | None, timeout: float) -> None:
        self.requests = requests
        self.deadline = deadline  # perf_counter time to stop at (duration mode)
        self.remaining = total  # requests still to send (count mode)
        self.outstanding = 0  # requests sent and not yet settled (count mode)
        self.timeout = timeout
        self.next_index = 0
        self.stats = _Stats()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connections: set[_Connection] = set()
        self.idle: set[_Connection] = set()  # count mode: open, nothing left to send now

    def take(self) -> bytes | None:
        """The next request to send, or None when the run is over."""
        if self.finished.done():
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            self.finish()
            return None
        if self.remaining is not None:
            if self.remaining <= 0:
                if self.outstanding == 0:
                    self.finish()
                return None
            self.remaining -= 1
            self.outstanding += 1
        request = self.requests[self.next_index]
        self.next_index = (self.next_index + 1) % len(self.requests)
        return request

    def settled(self, *, answered: bool) -> None:
        """A request got an answer, or was lost (count mode sends it again)."""
        if self.remaining is None:
            return
        self.outstanding -= 1
        if not answered:
            self.remaining += 1
            while self.remaining > 0 and self.idle:
                self.idle.pop().send_next()
        if self.remaining <= 0 and self.outstanding == 0:
            self.finish()

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read the whole answer, send the next."""

    def __init__(self, run: _Run, reconnect: asyncio.Event) -> None:
        self.run = run
        self.reconnect = reconnect  # set when this connection is gone for good
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need: int | None = None  # bytes of the current answer, once its head is read
        self.status = 0
        self.close_after = False
        self.sent_at: float | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.run.connections.add(self)
        self.send_next()

    def send_next(self) -> None:
        """Send the next request of the run, or idle/close when there is none."""
        if self.closed:
            return
        request = self.run.take()
        if request is None:
            if self.run.finished.done():
                self.close()
            else:
                self.run.idle.add(self)  # count mode: a lost request may come back
            return
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.sent_at is not None:
            if self.need is None:
                end = self.buffer.find(_HEAD_END)
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                try:
                    self.status = int(head[9:12])
                    length = int(head.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
                except (ValueError, IndexError):
                    self._lost("read")  # no status or no Content-Length: not for us
                    return
                self.close_after = b"\r\nconnection: close" in head
                self.need = end + len(_HEAD_END) + length
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = None
            self._answered()

    def _answered(self) -> None:
        assert self.sent_at is not None
        now = time.perf_counter()
        sent, self.sent_at = self.sent_at, None
        run, stats = self.run, self.run.stats
        if run.deadline is None or now <= run.deadline:
            stats.latencies.append(now - sent)
            stats.statuses[self.status] += 1
            if self.status > 399:
                stats.errors["status"] += 1
        run.settled(answered=True)
        if self.close_after:
            self.close()
        else:
            self.send_next()

    def _lost(self, kind: str) -> None:
        if self.sent_at is not None:
            self.run.stats.errors[kind] += 1
            self.sent_at = None
            self.run.settled(answered=False)
        self.close()

    def timed_out(self, now: float) -> bool:
        """Give up on a request that waited longer than the timeout."""
        if self.sent_at is not None and now - self.sent_at > self.run.timeout:
            self._lost("timeout")
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_at is not None:
            if not self.run.finished.done():  # else we closed it ourselves at the end
                self.run.stats.errors["read"] += 1
            self.sent_at = None
            self.run.settled(answered=False)
        self.closed = True
        self.run.connections.discard(self)
        self.run.idle.discard(self)
        self.reconnect.set()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def _slot(run: _Run, host: str, port: int) -> None:
    """Keep one connection open until the run is over (reconnecting when it drops)."""
    loop = asyncio.get_running_loop()
    while not run.finished.done():
        gone = asyncio.Event()
        try:
            await loop.create_connection(functools.partial(_Connection, run, gone), host, port)
        except OSError:
            run.stats.errors["connect"] += 1
            await asyncio.sleep(_RECONNECT_DELAY_S)
            continue
        await gone.wait()


async def _watchdog(run: _Run) -> None:
    while not run.finished.done():
        await asyncio.sleep(_WATCHDOG_S)
        now = time.perf_counter()
        for conn in list(run.connections):
            conn.timed_out(now)


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def run_load(
    host: str, port: int, path: str, bodies: Sequence[bytes], *, connections: int,
    duration: float | None, total: int | None, request_timeout: float, max_time: float,
) -> dict[str, Any]:
    """Drive the server; return the result in the shape of bench.py's wrk hook."""
    requests = [
        (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
         ).encode() + body
        for body in bodies
    ]
    start = time.perf_counter()
    run = _Run(requests, deadline=None if duration is None else start + duration,
               total=total, timeout=request_timeout)
    tasks = [asyncio.create_task(_slot(run, host, port)) for _ in range(connections)]
    tasks.append(asyncio.create_task(_watchdog(run)))
    limit = duration if duration is not None else max_time
    incomplete = False
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), timeout=limit)
    except TimeoutError:
        incomplete = duration is None  # count mode ran out of time
    run.finish()
    elapsed = time.perf_counter() - start
    if duration is not None:
        elapsed = duration
    for conn in list(run.connections):
        conn.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stats = run.stats
    ordered = sorted(stats.latencies)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    us = 1e6
    return {
        "requests": len(ordered),
        "duration_us": round(elapsed * us),
        "errors": dict(stats.errors),
        "latency_us": {
            "mean": mean * us,
            "max": (ordered[-1] if ordered else 0.0) * us,
            "p50": _percentile(ordered, 50) * us,
            "p90": _percentile(ordered, 90) * us,
            "p99": _percentile(ordered, 99) * us,
            "p999": _percentile(ordered, 99.9) * us,
        },
        "statuses": {str(code): n for code, n in sorted(stats.statuses.items())},
        "incomplete": incomplete,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/events")
    parser.add_argument("--bodies", type=Path, required=True,
                        help="file with one request body per line")
    parser.add_argument("--connections", type=int, default=32)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--duration", type=float, help="seconds to run")
    mode.add_argument("--requests", type=int, help="requests to get answered, then stop")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds before a request counts as timed out")
    parser.add_argument("--max-time", type=float, default=600.0,
                        help="with --requests: give up after this many seconds")
    args = parser.parse_args(argv)
    bodies = [line for line in args.bodies.read_bytes().split(b"\n") if line]
    if not bodies:
        parser.error(f"{args.bodies}: no request body in it")

    async def go() -> dict[str, Any]:
        return await run_load(
            args.host, args.port, args.path, bodies, connections=args.connections,
            duration=args.duration, total=args.requests, request_timeout=args.timeout,
            max_time=args.max_time,
        )

    try:
        import uvloop
    except ImportError:
        result = asyncio.run(go())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(go())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 1 if result["incomplete"] else 0


if __name__ == "__main__":
    sys.exit(main())
