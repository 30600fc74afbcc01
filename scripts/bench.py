#!/usr/bin/env python3
"""Benchmark `collector serve --handler noop` against a bare aiohttp reference server.

    python3 scripts/bench.py                 # every figure (about 12 minutes, postgres 2.5 of them)
    python3 scripts/bench.py --quick         # smaller runs and counts: a smoke run
    python3 scripts/bench.py --only single   # one figure (repeatable)
    python3 scripts/bench.py --json out.json # also write the results as JSON
    python3 scripts/bench.py --no-wrk        # use scripts/loadgen.py even if wrk exists
    python3 scripts/bench.py --busy 1        # the same on a busy machine (context)
    python3 scripts/bench.py --only postgres --postgres postgresql://...  # a given server

How it measures (servers as subprocesses, the same load for each, runs in turns and
medians) is written once, in docs/performance.md, with the current figures and how to
reproduce them.

Figures (noop handler, the worker draining concurrently unless said otherwise):

  single   single-event POSTs at 32 connections: requests/s against the reference's, and
           the backlog right when the load stops, in seconds of intake
  arrays   POSTs of 100-event arrays at 32 connections: events/s accepted
  latency  p99 latency of a single-event POST at 8 connections
  drain    a backlog built with the worker held (scripts.bench_handlers:gate), the daemon
           stopped (SIGTERM) and started again with --handler noop: overall jobs/s, and
           the last tenth's rate against the first tenth's (/v1/queue sampled every 5 ms)
  memory   the same with 1,000,000 jobs: start-up to the first 200 on /readyz, and the
           resident memory (VmRSS) of the daemon holding them
  cycles   fill/drain cycles on one data dir: the size of queue.db + -wal + -shm after
           each, third cycle against the first
  token    the bearer-token check (collector.server.http._check_token, in this
           process) with a 256 KiB token: median time of a guess wrong only in its last
           character over one wrong in its first, beside the same figure for a plain ==
           measured in the same run (which shows the harness can see an early exit here)
  pipeline the whole pipeline on real recorded messages (every message of the recording,
           in copies that are matches of their own), POSTed in 100-event arrays until the
           last is applied: the default handler (stats) against noop, in turns
  dashboard the dashboard's pages on a history of 2,000 3v3 matches among 40 players in 200
           sittings, built in this process through the real StatsStore.apply_run (each
           match a short live stretch, so every line has its derived statistics, then its
           goals and MatchEnded), under a `collector serve` (default handler): each JSON
           API call a page makes when it opens, p50/p95 and the bytes of its answer, beside
           GET /healthz timed in the same rounds; each page's calls at once; and each
           page's weight (the shell and every static file it loads, uncompressed)
  postgres 100-event array POSTs (as `arrays`, 32 connections in all) at one SQLite-mode
           node, one PostgreSQL-mode node and two PostgreSQL-mode nodes on one database
           (a load generator per node, 16 connections each), in turns: events/s, p50/p99
           latency, each node's group commits, and whether every acknowledged event was
           applied (the leader's /v1/queue drained; processed against acknowledged);
           then the pipeline's load with --handler stats on one SQLite-mode node and
           one PostgreSQL-mode node (what a leader applies, statistics included).
           --postgres DSN uses that server; else a private cluster is started for the run
           (scripts/pgcluster.py: Debian's binaries, fsync on, a free port, never 5432)

With --busy N, N processes spin on the CPUs for the whole run (each a program of its own,
in a session of its own, at the default priority), as other services would on a home
server, or another tenant on a shared VM's host. That is context, not a target: it shows
what CPU contention does to a server that waits for its disk before answering.

It prints each figure as it is measured, then a table (figure | collector | reference |
ratio | target | result). A missed target is reported, not an error: the exit code is 0
when every figure was measured, 1 when one could not be (the reason is printed), 130 on
Ctrl-C. Servers, load generators and the temporary directory are removed in every case.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import http.client
import json
import math
import os
import platform
import posixpath
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

REPO = Path(__file__).resolve().parent.parent
CAPTURE = REPO / "tests" / "fixtures" / "rl-stats-api" / "player-capture.jsonl"
LOADGEN = REPO / "scripts" / "loadgen.py"
REFERENCE = REPO / "scripts" / "reference_server.py"
GATE_HANDLER = "scripts.bench_handlers:gate"
GATE_ENV = "BENCH_GATE_FILE"  # the variable scripts/bench_handlers.py reads
QUEUE_FILES = ("queue.db", "queue.db-wal", "queue.db-shm")
FIGURES = ("single", "arrays", "latency", "drain", "memory", "cycles", "token", "pipeline",
           "dashboard", "postgres")
HOST = "127.0.0.1"
EVENTS_PER_ARRAY = 100
REQUEST_TIMEOUT_S = 10  # a load-generator request slower than this counts as timed out
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.025  # /v1/queue polling while waiting for a backlog to go
DRAIN_POLL_S = 0.005  # /v1/queue sampling of a drain: 200,000 jobs go in about a second
MB = 1024 * 1024
BUSY_LOOP = "while True: pass"  # what each --busy process runs


class BenchError(Exception):
    """A figure could not be measured (a server did not start, a count is wrong...)."""


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Durations and counts of one run."""

    quick: bool
    duration_s: int  # each measured load run
    warmup_s: int  # load before each measured run (not counted)
    connections: int = 32
    latency_connections: int = 8
    fill_connections: int = 8
    drain_jobs: int = 200_000
    memory_jobs: int = 1_000_000
    cycle_jobs: int = 200_000
    cycles: int = 3
    serve_s: float = 3.0  # serving time before the second RSS reading
    rounds: int = 3  # runs of each server, in turns, for the load figures; drains
    single_rounds: int = 5  # ... for the single-event figure, the one whose target is a ratio
    pipeline_copies: int = 40  # copies of the recording, each a match of its own (pipeline)
    history_matches: int = 2_000  # the dashboard's history: 3v3 matches,
    history_players: int = 40  # ... among this many players,
    history_sittings: int = 200  # ... in this many sittings
    dashboard_rounds: int = 100  # timings of each call and page (after one warm-up round)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(quick=True, duration_s=2, warmup_s=1, drain_jobs=20_000,
                       memory_jobs=50_000, cycle_jobs=20_000, serve_s=1.0, rounds=1,
                       single_rounds=1, pipeline_copies=4, history_matches=60,
                       history_players=12, history_sittings=6, dashboard_rounds=10)
        return cls(quick=False, duration_s=10, warmup_s=1)


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the issue asks of a figure."""

    kind: Literal["min", "max", "min_ratio"]
    value: float
    text: str

    def met(self, collector: float, ratio: float | None) -> bool | None:
        if self.kind == "min":
            return collector >= self.value
        if self.kind == "max":
            return collector <= self.value
        return None if ratio is None else ratio >= self.value


@dataclass
class Row:
    """One line of the final table."""

    figure: str
    unit: str
    collector: float | None
    reference: float | None = None
    target: Target | None = None
    reference_label: str = ""
    error: str = ""
    veto: str = ""  # why the figure fails whatever its value (e.g. events were lost)

    @property
    def ratio(self) -> float | None:
        if self.collector is None or not self.reference:
            return None
        return self.collector / self.reference

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.collector is None:
            return None
        if self.veto:
            return False
        return self.target.met(self.collector, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure, "unit": self.unit, "collector": self.collector,
            "reference": self.reference, "reference_label": self.reference_label,
            "ratio": self.ratio, "target": self.target.text if self.target else None,
            "passed": self.passed, "error": self.error or None, "veto": self.veto or None,
        }


@dataclass
class Report:
    """Everything measured in this run."""

    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def verdict(self) -> tuple[str, bool]:
        """The closing line, and whether every figure with a target was measured (a
        missed target is a result; a figure left unmeasured is not)."""
        missed = [r.figure for r in self.rows if r.passed is False]
        unmeasured = [r.figure for r in self.rows if r.target is not None and r.collector is None]
        lines = []
        if missed:
            lines.append("MISSED targets: " + "; ".join(missed))
        if unmeasured:
            lines.append("NOT MEASURED (see the lines above): " + "; ".join(unmeasured))
        return "\n".join(lines) or "every target met", not unmeasured and not self.errors


def say(text: str = "") -> None:
    print(text, flush=True)


# -- processes ------------------------------------------------------------------------------


def _libc_prctl() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[[int, int], int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _libc_prctl() if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In each child: die (SIGKILL) with the bench, even if the bench is SIGKILLed."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], *, env: dict[str, str], cwd: Path, out: Path | int
          ) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a Ctrl-C reaches only the bench, which cleans up)."""
    stdout: TextIO | int = out.open("a") if isinstance(out, Path) else out
    try:
        return subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup,
        )
    finally:
        if not isinstance(stdout, int):
            stdout.close()


def base_env() -> dict[str, str]:
    """The bench's environment without collector settings or credentials of the caller."""
    dropped = {"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"}  # a token would make POSTs 401
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COLLECTOR_") and k not in dropped}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """A server subprocess (collector or reference) with its log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], port: int,
                 log: Path, cwd: Path, expected_warnings: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.log = log
        self.cwd = cwd
        self.expected_warnings = expected_warnings
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self._conn: http.client.HTTPConnection | None = None  # kept alive for /v1/queue

    def start(self) -> None:
        self.spawned_at = time.monotonic()
        self.proc = spawn(self.argv, env=self.env, cwd=self.cwd, out=self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from the spawn to the first 200 on /readyz."""
        assert self.proc is not None
        deadline = self.spawned_at + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_request(self.port, "GET", "/readyz", timeout=1.0)
                if status == 200:
                    return time.monotonic() - self.spawned_at
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.01)

    def queue(self) -> dict[str, Any]:
        """GET /v1/queue (the daemon only), on a kept-alive connection: the drain samples
        it every few milliseconds, and a new connection each time would be most of the cost."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=5.0)
            try:
                self._conn.request("GET", "/v1/queue")
                resp = self._conn.getresponse()
                status, body = resp.status, resp.read()
                break
            except (OSError, http.client.HTTPException):
                self._disconnect()  # the server may have closed it while it was idle
                if attempt == 2:
                    raise
        if status != 200:
            raise BenchError(f"{self.name}: GET /v1/queue answered {status}: {body[:200]!r}")
        data: dict[str, Any] = json.loads(body)
        return data

    def backlog(self) -> int:
        """Jobs not finished: pending + in flight."""
        q = self.queue()
        return int(q["pending"]) + int(q["in_flight"])

    def memory(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) of the process, in MB."""
        found: dict[str, float] = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024 / MB
        return found

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit code."""
        self._disconnect()
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BenchError(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM "
                                 f"(killed):\n{self.log_tail()}") from None
        return proc.returncode

    def kill(self) -> None:
        self._disconnect()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Warnings, errors and tracebacks in the log, but those expected of this run."""
        found: list[str] = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "Error" in line:
                        found.append(line.strip())
                    continue
                if not isinstance(entry, dict):
                    continue
                level = str(entry.get("level", "")).lower()
                if level in {"warning", "error", "critical", "exception"} and (
                        entry.get("event") not in self.expected_warnings):
                    found.append(line.strip()[:400])
        return found


class Harness:
    """Owns the temporary directory, the servers and the load files; cleans everything up."""

    def __init__(self, plan: Plan, *, use_wrk: bool, work_dir: Path | None, keep: bool,
                 busy: int = 0, postgres_dsn: str | None = None) -> None:
        self.plan = plan
        self.postgres_dsn = postgres_dsn  # the postgres figure's database (else its own)
        self.use_wrk = use_wrk
        self.keep = keep
        self.servers: list[Server] = []
        self.busy: list[subprocess.Popen[bytes]] = []
        self.report = Report()
        events = load_updatestates(CAPTURE)
        self.event_count = len(events)
        self.first_event = events[0]
        self.fast_reference = _have("uvloop") and _have("orjson")
        self.tmp = Path(tempfile.mkdtemp(prefix="collector-bench-", dir=work_dir))
        try:
            self.bodies_single = self.tmp / "single.bodies"
            self.bodies_array = self.tmp / "array100.bodies"
            write_bodies(self.bodies_single, [[e] for e in events], array=False)
            write_bodies(self.bodies_array, array_bodies(events, EVENTS_PER_ARRAY), array=True)
            self.lua = self.tmp / "rotate.lua"
            self.lua.write_text(WRK_LUA)
            for _ in range(busy):
                self.busy.append(spawn([sys.executable, "-c", BUSY_LOOP], env=base_env(),
                                       cwd=self.tmp, out=subprocess.DEVNULL))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        self.servers.clear()
        for proc in self.busy:
            proc.kill()
            proc.wait()
        self.busy.clear()
        if self.keep:
            say(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- servers --------------------------------------------------------------------------

    def reference(self, *, fast: bool) -> Server:
        port = free_port()
        name = "reference (uvloop+orjson)" if fast else "reference (asyncio+json)"
        argv = [sys.executable, str(REFERENCE), "--port", str(port)]
        if fast:
            argv.append("--fast")
        return self._server(name, argv, port, base_env())

    def collector(self, data_dir: Path, *, gate: Path | None = None, handler: str = "noop",
                  dsn: str | None = None) -> Server:
        """`collector serve` on `data_dir`; with `gate`, the worker waits for that file;
        with `dsn`, in the PostgreSQL mode on that database (a node of several)."""
        port = free_port()
        argv = [sys.executable, "-m", "collector", "serve", "--port", str(port),
                "--data-dir", str(data_dir), "--handler", handler if gate is None else GATE_HANDLER]
        env = base_env()
        expected: frozenset[str] = frozenset()
        name = f"collector ({handler})"
        if dsn is not None:
            env["COLLECTOR_POSTGRES_DSN"] = dsn
            name = f"collector ({handler}, PostgreSQL, :{port})"
        if gate is not None:
            name = "collector (gate)"
            env[GATE_ENV] = str(gate)
            # Real settings: the held job must not time out, and SIGTERM must not wait
            # the default 10 s for it (it is cancelled and stays pending).
            env["COLLECTOR_WORKER_HANDLER_TIMEOUT"] = "86400"
            env["COLLECTOR_SERVER_SHUTDOWN_TIMEOUT"] = "1"
            expected = frozenset({"worker_stop_timeout"})
        return self._server(name, argv, port, env, expected)

    def _server(self, name: str, argv: list[str], port: int, env: dict[str, str],
                expected: frozenset[str] = frozenset()) -> Server:
        log = self.tmp / f"server-{len(self.servers) + 1}-{port}.log"
        server = Server(name, argv, env=env, port=port, log=log, cwd=self.tmp,
                        expected_warnings=expected)
        self.servers.append(server)
        server.start()
        return server

    def finish(self, server: Server) -> None:
        """Stop a server, check its exit code and its log."""
        try:
            code = server.stop()
        finally:
            with contextlib.suppress(ValueError):
                self.servers.remove(server)
        for line in server.log_problems():
            self.report.problems.append(f"{server.name} log: {line}")
        if code != 0:
            self.report.problems.append(f"{server.name} exited with {code} after SIGTERM")

    def stop_all(self) -> None:
        for server in list(self.servers):
            server.kill()
        self.servers.clear()

    # -- load -----------------------------------------------------------------------------

    def load(self, server: Server, bodies: Path, *, connections: int, duration_s: int
             ) -> LoadResult:
        """Drive `server` for `duration_s` with wrk (or loadgen.py): closed loop, -t1."""
        argv = self._load_argv(server, bodies, connections, duration_s)
        return run_loader(argv, timeout=duration_s + 60, cwd=self.tmp)

    def load_many(self, servers: Sequence[Server], bodies: Path, *, connections: int,
                  duration_s: int) -> list[LoadResult]:
        """The same as `load`, one load generator per server, all at once (each with
        `connections` of its own); their results in the order of `servers`."""
        argvs = [self._load_argv(s, bodies, connections, duration_s) for s in servers]
        return run_loaders(argvs, timeout=duration_s + 60, cwd=self.tmp)

    def _load_argv(self, server: Server, bodies: Path, connections: int, duration_s: int
                   ) -> list[str]:
        url = f"http://{HOST}:{server.port}/v1/events"
        if self.use_wrk:
            return ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s",
                    f"--timeout={REQUEST_TIMEOUT_S}s", "--latency", "-s", str(self.lua), url,
                    "--", str(bodies)]
        return [sys.executable, str(LOADGEN), "--port", str(server.port),
                "--bodies", str(bodies), "--connections", str(connections),
                "--duration", str(duration_s), "--timeout", str(REQUEST_TIMEOUT_S)]

    def fill(self, server: Server, jobs: int) -> float:
        """Add exactly `jobs` pending jobs (100-event arrays); returns the events/s."""
        if jobs % EVENTS_PER_ARRAY:
            raise ValueError(f"{jobs} is not a multiple of {EVENTS_PER_ARRAY}")
        before = server.backlog()
        max_time = max(120.0, jobs / 2_000)
        argv = [sys.executable, str(LOADGEN), "--port", str(server.port),
                "--bodies", str(self.bodies_array),
                "--connections", str(self.plan.fill_connections),
                "--requests", str(jobs // EVENTS_PER_ARRAY), "--timeout", "60",
                "--max-time", str(max_time)]
        started = time.monotonic()
        result = run_loader(argv, timeout=max_time + 60, cwd=self.tmp)
        elapsed = time.monotonic() - started
        added = server.backlog() - before
        if added != jobs:
            raise BenchError(f"fill of {server.name}: {added:,} jobs added, {jobs:,} expected "
                             f"(answers: {result.statuses}, errors: {result.errors})")
        return jobs / elapsed


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- load files and the load generators ------------------------------------------------------


def load_updatestates(path: Path) -> list[bytes]:
    """The recording's UpdateState messages, byte for byte, in order."""
    events = []
    for line in path.read_bytes().splitlines():
        if line.strip() and json.loads(line).get("Event") == "UpdateState":
            events.append(line.strip())
    if not events:
        raise BenchError(f"{path}: no UpdateState message")
    return events


def array_bodies(events: Sequence[bytes], size: int) -> list[list[bytes]]:
    """Bodies of `size` consecutive events; body k starts at event k*size (mod len), so
    rotating through them replays the recording in a loop."""
    n = len(events)
    count = n // math.gcd(n, size)  # after that many bodies the stream wraps exactly
    return [[events[(k * size + j) % n] for j in range(size)] for k in range(count)]


def write_bodies(path: Path, bodies: Sequence[Sequence[bytes]], *, array: bool) -> None:
    """One request body per line (JSON never holds a raw newline)."""
    with path.open("wb") as fh:
        for events in bodies:
            fh.write(b"[" + b",".join(events) + b"]" if array else events[0])
            fh.write(b"\n")


#: wrk's script: one thread rotates through pre-formatted POSTs (bodies file as its
#: argument); done() prints the summary as one JSON line.
WRK_LUA = r"""
local requests, count, index = {}, 0, 0

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for body in io.lines(args[1]) do
    if #body > 0 then
      count = count + 1
      requests[count] = wrk.format("POST", nil, headers, body)
    end
  end
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"max":%.1f,' ..
    '"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What a load generator reports (wrk's done() hook, or loadgen.py)."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    statuses: dict[str, int]
    loader_cpu_s: float = 0.0  # CPU time the load generator used (user + system)

    @property
    def loader_cpu_share(self) -> float:
        """The load generator's CPU time over the run's duration (1.0 = one core busy)."""
        return self.loader_cpu_s / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        """Requests answered without an error status."""
        return self.requests - self.errors.get("status", 0)

    @property
    def per_second(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def trouble(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return f"errors {bad}" if bad else ""


def run_loader(argv: list[str], *, timeout: float, cwd: Path) -> LoadResult:
    """Run wrk or loadgen.py to the end and parse its BENCH_RESULT line."""
    return run_loaders([argv], timeout=timeout, cwd=cwd)[0]


def run_loaders(argvs: Sequence[list[str]], *, timeout: float, cwd: Path) -> list[LoadResult]:
    """Run load generators at once, each to the end; their results in order. Each gets
    an even share of the CPU time they used together (the OS counts children's CPU time
    only in sum)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs: list[subprocess.Popen[bytes]] = []
    outs: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        for argv in argvs:
            procs.append(spawn(argv, env=base_env(), cwd=cwd, out=subprocess.PIPE))
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append(out)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # only the loaders were reaped since
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [_load_result(argv, proc.returncode, out.decode(errors="replace"), cpu / len(argvs))
            for argv, proc, out in zip(argvs, procs, outs, strict=True)]


def _load_result(argv: Sequence[str], code: int | None, text: str, cpu: float) -> LoadResult:
    """The BENCH_RESULT line of a load generator's output."""
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            return LoadResult(
                requests=int(data["requests"]), duration_s=data["duration_us"] / 1e6,
                errors={k: int(v) for k, v in data["errors"].items()},
                latency_us={k: float(v) for k, v in data["latency_us"].items()},
                statuses={str(k): int(v) for k, v in data.get("statuses", {}).items()},
                loader_cpu_s=cpu,
            )
    tail = "\n".join(text.splitlines()[-10:])
    raise BenchError(f"{Path(argv[0]).name} (exit {code}) printed no result:\n{tail}")


# -- drain arithmetic -----------------------------------------------------------------------


@dataclass(frozen=True)
class DrainRates:
    """Rates of a drain, from (seconds, jobs done) samples."""

    overall: float
    first_tenth: float | None
    last_tenth: float | None
    seconds: float

    @property
    def last_vs_first(self) -> float | None:
        if not self.first_tenth or self.last_tenth is None:
            return None
        return self.last_tenth / self.first_tenth


def time_at(samples: Sequence[tuple[float, int]], done: float) -> float:
    """When `done` jobs were done, interpolated between the samples around it."""
    for i, (t, d) in enumerate(samples):
        if d >= done:
            if i == 0:
                return t
            t0, d0 = samples[i - 1]
            return t0 + (t - t0) * (done - d0) / (d - d0)
    raise ValueError(f"the samples never reach {done}")


def drain_rates(samples: Sequence[tuple[float, int]], total: int, *, min_samples: int = 4
                ) -> DrainRates:
    """Overall rate from the first sample to `total`, and the rates of the first tenth
    (from the first sample on) and of the last tenth of the jobs (None when a tenth holds
    fewer than `min_samples` samples)."""
    t_start, d_start = samples[0]
    t_end = time_at(samples, total)
    seconds = t_end - t_start
    overall = (total - d_start) / seconds if seconds > 0 else math.inf
    tenth = total / 10
    first = last = None
    if d_start + tenth <= total - tenth:  # both tenths lie inside the sampled span
        first_end = time_at(samples, d_start + tenth)
        last_start = time_at(samples, total - tenth)
        # A rate over a window that holds fewer samples than this is mostly noise.
        if (sum(t_start <= t <= first_end for t, _ in samples) >= min_samples
                and sum(last_start <= t <= t_end for t, _ in samples) >= min_samples):
            first = tenth / (first_end - t_start)
            last = tenth / (t_end - last_start)
    return DrainRates(overall=overall, first_tenth=first, last_tenth=last, seconds=seconds)


def sample_drain(server: Server, total: int, timeout: float) -> list[tuple[float, int]]:
    """(seconds since the server's spawn, jobs done) every DRAIN_POLL_S until none is left."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = server.backlog()
        now = time.monotonic() - server.spawned_at
        samples.append((now, total - left))
        if left == 0:
            return samples
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name}: {left:,} of {total:,} jobs still pending after "
                             f"{timeout:.0f} s")
        time.sleep(DRAIN_POLL_S)


def data_files(data_dir: Path) -> dict[str, int]:
    """Sizes of the queue's files, in bytes."""
    return {name: (data_dir / name).stat().st_size
            for name in QUEUE_FILES if (data_dir / name).exists()}


# -- the figures ----------------------------------------------------------------------------


def _fmt_load(result: LoadResult, unit_per_request: int = 1) -> str:
    lat = result.latency_us
    rate = result.per_second * unit_per_request
    unit = "events/s" if unit_per_request > 1 else "req/s"
    text = (f"{rate:>9,.0f} {unit}  p50 {lat['p50'] / 1000:.2f} ms  "
            f"p99 {lat['p99'] / 1000:.2f} ms  ({result.requests:,} answers; load generator "
            f"used {result.loader_cpu_share:.0%} of a core)")
    return text + (f"  {result.trouble}" if result.trouble else "")


def _measure_collector_load(h: Harness, name: str, bodies: Path, connections: int,
                            per_request: int) -> tuple[LoadResult, dict[str, Any]]:
    """Warm up, run the load on a fresh daemon, read the backlog at once, check counts."""
    plan = h.plan
    data_dir = h.tmp / f"{name}-data"
    server = h.collector(data_dir)
    server.wait_ready()
    h.load(server, bodies, connections=connections, duration_s=plan.warmup_s)
    before = _settle(server, 60.0)
    result = h.load(server, bodies, connections=connections, duration_s=plan.duration_s)
    at_end = server.queue()
    end_time = time.monotonic()
    _wait_empty(server, 60.0)
    catch_up = time.monotonic() - end_time
    after = _settle(server, 60.0)
    h.finish(server)
    shutil.rmtree(data_dir, ignore_errors=True)

    stored = after["last_seq"] - before["last_seq"]
    answered = result.ok * per_request
    in_flight_max = connections * per_request
    if not answered <= stored <= answered + in_flight_max:
        h.report.problems.append(
            f"{name}: the daemon stored {stored:,} events, the load generator got 202 for "
            f"{answered:,} (at most {in_flight_max} more may have been in flight at the end)")
    processed = after["processed_total"] - before["processed_total"]
    if processed != stored or after["dead"] != before["dead"]:
        h.report.problems.append(
            f"{name}: {stored:,} events stored but {processed:,} processed "
            f"(dead letters {before['dead']} -> {after['dead']})")
    backlog = int(at_end["pending"]) + int(at_end["in_flight"])
    extra = {"backlog_at_end": backlog, "catch_up_s": catch_up, "stored": stored,
             "answered_events": answered}
    return result, extra


def _settle(server: Server, timeout: float) -> dict[str, Any]:
    """/v1/queue once nothing is pending and nothing more arrives: the requests a load
    generator abandoned when it stopped may still be committed a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        _wait_empty(server, max(1.0, deadline - time.monotonic()))
        first = server.queue()
        time.sleep(0.3)
        second = server.queue()
        if first == second or time.monotonic() > deadline:
            return second


def _wait_empty(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.backlog():
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name}: backlog not drained within {timeout:.0f} s")
        time.sleep(POLL_S)


def _measure_reference_load(h: Harness, fast: bool, bodies: Path, connections: int
                            ) -> LoadResult:
    server = h.reference(fast=fast)
    server.wait_ready()
    h.load(server, bodies, connections=connections, duration_s=h.plan.warmup_s)
    result = h.load(server, bodies, connections=connections, duration_s=h.plan.duration_s)
    h.finish(server)
    return result


def median_run(results: Sequence[LoadResult], key: Callable[[LoadResult], float]
               ) -> LoadResult:
    """The run whose `key` is the median (the lower middle one for an even count)."""
    ranked = sorted(results, key=key)
    return ranked[(len(ranked) - 1) // 2]


def _load_figure(h: Harness, name: str, *, bodies: Path, connections: int, per_request: int,
                 key: Callable[[LoadResult], float] = lambda r: r.per_second,
                 rounds: int | None = None,
                 ) -> tuple[LoadResult, LoadResult, LoadResult | None, dict[str, Any]]:
    """The same load on the reference, the daemon and the fast reference, in turns.

    The machine's speed drifts (a shared 2-core VM can run at half speed for a minute),
    so one run of each, one after the other, compares a fast minute with a slow one.
    Instead each server runs `rounds` times (default `plan.rounds`), in turns, and the
    median run of each (by `key`) is the figure; every run is printed, the daemon's with
    its ratio to the reference's run in the same round.
    """
    rounds = h.plan.rounds if rounds is None else rounds
    kind = f"{per_request}-event arrays" if per_request > 1 else "single events"
    say(f"\n== {name}: POSTs of {kind}, {connections} connections, {h.plan.duration_s} s "
        f"each (after {h.plan.warmup_s} s of warm-up), {rounds} rounds in turns")
    refs: list[LoadResult] = []
    cols: list[tuple[LoadResult, dict[str, Any]]] = []
    fasts: list[LoadResult] = []
    for round_ in range(1, rounds + 1):
        refs.append(_measure_reference_load(h, False, bodies, connections))
        say(f"  {round_}  reference, asyncio + json       {_fmt_load(refs[-1], per_request)}")
        cols.append(_measure_collector_load(h, name, bodies, connections, per_request))
        this = key(cols[-1][0]) / key(refs[-1]) if key(refs[-1]) else math.nan
        say(f"  {round_}  collector serve --handler noop  {_fmt_load(cols[-1][0], per_request)}"
            f"  [{this:.2f}x this round's reference]")
        if h.fast_reference:
            fasts.append(_measure_reference_load(h, True, bodies, connections))
            say(f"  {round_}  reference, uvloop + orjson      "
                f"{_fmt_load(fasts[-1], per_request)}")
    ref = median_run(refs, key)
    col = median_run([c for c, _ in cols], key)
    extra = next(e for c, e in cols if c is col)
    extra["backlog_at_end_max"] = max(e["backlog_at_end"] for _, e in cols)
    fast = median_run(fasts, key) if fasts else None
    details = {"reference": dataclasses.asdict(ref), "collector": dataclasses.asdict(col),
               "reference_fast": None if fast is None else dataclasses.asdict(fast),
               "rounds": {"reference": [dataclasses.asdict(r) for r in refs],
                          "collector": [dataclasses.asdict(c) for c, _ in cols],
                          "reference_fast": [dataclasses.asdict(f) for f in fasts]},
               **extra}
    h.report.details[name] = details
    return ref, col, fast, extra


def figure_single(h: Harness) -> None:
    # Five rounds, not three: this is the figure whose target is a ratio, and the daemon,
    # which waits for its fsync before answering, is hit harder than the reference by a
    # slow minute of the VM (see --busy); a median of five is steadier than one of three.
    ref, col, fast, extra = _load_figure(h, "single", bodies=h.bodies_single,
                                         connections=h.plan.connections, per_request=1,
                                         rounds=h.plan.single_rounds)
    c = h.plan.connections
    h.report.add(Row(f"single-event POSTs, c{c}", "req/s", col.per_second, ref.per_second,
                     Target("min_ratio", 0.75, "≥ 0.75x reference"), "asyncio+json"))
    if fast is not None:
        h.report.add(Row(f"single-event POSTs, c{c} (context)", "req/s", col.per_second,
                         fast.per_second, None, "uvloop+orjson"))
    # The worst round's backlog, in seconds of the median round's intake.
    backlog = extra["backlog_at_end_max"]
    backlog_s = backlog / col.per_second if col.per_second else math.inf
    say(f"  median runs: reference {ref.per_second:,.0f} req/s, collector "
        f"{col.per_second:,.0f} req/s, ratio {col.per_second / ref.per_second:.3f}"
        if ref.per_second else "  the reference answered nothing")
    say(f"  backlog when the load stopped (worst round): {backlog:,} jobs = "
        f"{backlog_s:.3f} s of intake")
    h.report.add(Row(f"backlog at the end of the {h.plan.duration_s} s run", "s",
                     backlog_s, None, Target("max", 1.0, "< 1 s of intake")))


def figure_arrays(h: Harness) -> None:
    n = EVENTS_PER_ARRAY
    ref, col, fast, _ = _load_figure(h, "arrays", bodies=h.bodies_array,
                                     connections=h.plan.connections, per_request=n)
    c = h.plan.connections
    h.report.add(Row(f"{n}-event array POSTs, c{c}", "events/s", col.per_second * n,
                     ref.per_second * n, Target("min", 50_000, "≥ 50,000 events/s"),
                     "asyncio+json"))
    if fast is not None:
        h.report.add(Row(f"{n}-event array POSTs, c{c} (context)", "events/s",
                         col.per_second * n, fast.per_second * n, None, "uvloop+orjson"))


def figure_latency(h: Harness) -> None:
    c = h.plan.latency_connections
    ref, col, fast, _ = _load_figure(h, "latency", bodies=h.bodies_single, connections=c,
                                     per_request=1, key=lambda r: r.latency_us["p99"])
    h.report.add(Row(f"p99 latency, single-event POST, c{c}", "ms",
                     col.latency_us["p99"] / 1000, ref.latency_us["p99"] / 1000,
                     Target("max", 10.0, "≤ 10 ms"), "asyncio+json"))
    if fast is not None:
        h.report.add(Row(f"p99 latency, single-event POST, c{c} (context)", "ms",
                         col.latency_us["p99"] / 1000, fast.latency_us["p99"] / 1000, None,
                         "uvloop+orjson"))


def _build_backlog(h: Harness, data_dir: Path, jobs: int, *, indent: str = "  "
                   ) -> dict[str, Any]:
    """Fill `data_dir` with `jobs` pending jobs (worker held by the gate), then SIGTERM."""
    gate = h.tmp / f"{data_dir.name}.gate-open"  # never created: the gate stays closed
    filler = h.collector(data_dir, gate=gate)
    filler.wait_ready()
    rate = h.fill(filler, jobs)
    memory = filler.memory()
    h.finish(filler)
    say(f"{indent}filled {jobs:,} jobs in 100-event arrays at {rate:,.0f} events/s "
        f"(worker held); filler VmRSS {memory['VmRSS']:.1f} MB, peak {memory['VmHWM']:.1f} MB;"
        f" stopped with SIGTERM")
    return {"fill_events_per_s": rate, "filler_memory_mb": memory}


def _drain_once(h: Harness, round_: int) -> tuple[DrainRates, dict[str, Any]]:
    """Build a backlog of plan.drain_jobs, start a fresh daemon on it and sample the drain."""
    jobs = h.plan.drain_jobs
    data_dir = h.tmp / f"drain-data-{round_}"
    details = _build_backlog(h, data_dir, jobs, indent=f"  {round_}  ")
    server = h.collector(data_dir)
    startup = server.wait_ready()
    samples = sample_drain(server, jobs, timeout=max(120.0, jobs / 1_000))
    final = server.queue()
    h.finish(server)
    shutil.rmtree(data_dir, ignore_errors=True)
    if final["processed_total"] != jobs or final["last_seq"] != jobs or final["dead"]:
        h.report.problems.append(
            f"drain: after draining {jobs:,} jobs /v1/queue says processed_total="
            f"{final['processed_total']}, last_seq={final['last_seq']}, dead={final['dead']}")
    rates = drain_rates(samples, jobs)
    with_startup = jobs / time_at(samples, jobs)
    say(f"  {round_}  ready {startup:.2f} s after spawn; drained in {rates.seconds:.2f} s from "
        f"the first /v1/queue sample ({samples[0][1]:,} done then; {len(samples)} samples): "
        f"{rates.overall:,.0f} jobs/s ({with_startup:,.0f} jobs/s counting start-up)")
    if rates.last_vs_first is None:
        say(f"  {round_}  too few samples ({len(samples)}) to compare the first and last tenths")
    else:
        say(f"  {round_}  first tenth {rates.first_tenth:,.0f} jobs/s, last tenth "
            f"{rates.last_tenth:,.0f} jobs/s: last/first = {rates.last_vs_first:.2f}")
    details.update({"startup_s": startup, "samples": len(samples),
                    "overall_jobs_per_s": rates.overall, "with_startup_jobs_per_s": with_startup,
                    "first_tenth_jobs_per_s": rates.first_tenth,
                    "last_tenth_jobs_per_s": rates.last_tenth,
                    "last_vs_first": rates.last_vs_first, "seconds": rates.seconds,
                    "final_queue": final})
    return rates, details


def median_value(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (the lower middle one for an even count)."""
    known = sorted(v for v in values if v is not None)
    return known[(len(known) - 1) // 2] if known else None


def figure_drain(h: Harness) -> None:
    """plan.rounds drains, each of a backlog of its own: a tenth of 200,000 jobs lasts about
    a tenth of a second here, so one hiccup of the VM moves one drain's tenth by a fifth."""
    jobs = h.plan.drain_jobs
    say(f"\n== drain: a backlog of {jobs:,} jobs, drained by a fresh `collector serve "
        f"--handler noop`, {h.plan.rounds} rounds (each figure: the median round)")
    runs = [_drain_once(h, round_) for round_ in range(1, h.plan.rounds + 1)]
    overall = median_value([rates.overall for rates, _ in runs])
    ratio = median_value([rates.last_vs_first for rates, _ in runs])
    assert overall is not None
    say(f"  median rounds: {overall:,.0f} jobs/s overall, last/first = "
        + ("not measured" if ratio is None else f"{ratio:.2f}"))
    h.report.details["drain"] = {"rounds": [details for _, details in runs],
                                 "overall_jobs_per_s": overall, "last_vs_first": ratio}
    h.report.add(Row(f"drain {jobs:,} backlog, overall", "jobs/s", overall, None,
                     Target("min", 10_000, "≥ 10,000 jobs/s")))
    h.report.add(Row("drain: last tenth / first tenth", "x", ratio, None,
                     Target("min", 0.8, "≥ 0.80")))


def _serve_a_while(server: Server, seconds: float, event: bytes) -> int:
    """Answer one single-event POST, then /v1/queue polls for `seconds`; the POST's status."""
    status, _ = http_request(server.port, "POST", "/v1/events", event)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server.queue()
        time.sleep(0.1)
    return status


def figure_memory(h: Harness) -> None:
    jobs = h.plan.memory_jobs
    say(f"\n== memory: `collector serve` started on a data dir holding {jobs:,} pending jobs")
    data_dir = h.tmp / "memory-data"
    details = _build_backlog(h, data_dir, jobs)
    gate = h.tmp / "memory.gate-open"
    server = h.collector(data_dir, gate=gate)  # the worker is held: the backlog stays
    startup = server.wait_ready()
    at_ready = server.memory()
    post_status = _serve_a_while(server, h.plan.serve_s, h.first_event)
    served = server.memory()
    left = server.backlog()
    files = data_files(data_dir)
    h.finish(server)
    shutil.rmtree(data_dir, ignore_errors=True)
    expected_left = jobs + (1 if post_status == 202 else 0)
    if left != expected_left:
        h.report.problems.append(f"memory: {left:,} jobs pending after the restart, "
                                 f"{expected_left:,} expected")
    if jobs >= 1_000_000 and post_status != 503:
        h.report.problems.append(f"memory: a POST with {jobs:,} jobs pending (max_pending "
                                 f"1,000,000) answered {post_status}, not 503 queue_full")
    rss = max(at_ready["VmRSS"], served["VmRSS"], details["filler_memory_mb"]["VmRSS"])
    say(f"  ready {startup:.2f} s after spawn; VmRSS {at_ready['VmRSS']:.1f} MB at ready, "
        f"{served['VmRSS']:.1f} MB after {h.plan.serve_s:g} s of serving (peak VmHWM "
        f"{served['VmHWM']:.1f} MB); a POST answered {post_status}")
    say("  data files: " + ", ".join(f"{k} {v / MB:,.1f} MB" for k, v in files.items()))

    ref = h.reference(fast=False)
    ref_startup = ref.wait_ready()
    ref_memory = ref.memory()
    h.finish(ref)
    say(f"  reference (asyncio+json, no queue): ready {ref_startup:.2f} s after spawn, "
        f"VmRSS {ref_memory['VmRSS']:.1f} MB")
    details.update({"startup_s": startup, "memory_at_ready_mb": at_ready,
                    "memory_after_serving_mb": served, "post_status": post_status,
                    "data_files": files, "reference_startup_s": ref_startup,
                    "reference_memory_mb": ref_memory})
    h.report.details["memory"] = details
    h.report.add(Row(f"resident memory, {jobs:,} pending", "MB", rss, ref_memory["VmRSS"],
                     Target("max", 200.0, "≤ 200 MB"), "idle, no queue"))
    h.report.add(Row(f"start-up to /readyz 200, {jobs:,} pending", "s", startup, ref_startup,
                     Target("max", 3.0, "≤ 3 s"), "no queue"))


def figure_cycles(h: Harness) -> None:
    jobs, cycles = h.plan.cycle_jobs, h.plan.cycles
    say(f"\n== cycles: {cycles} x (fill {jobs:,} jobs with the worker held, release it, "
        f"drain to 0) on one data dir, one daemon")
    data_dir = h.tmp / "cycles-data"
    gate = h.tmp / "cycles.gate-open"
    server = h.collector(data_dir, gate=gate)
    server.wait_ready()
    sizes: list[int] = []
    per_cycle: list[dict[str, Any]] = []
    for cycle in range(1, cycles + 1):
        gate.unlink(missing_ok=True)  # close the gate: the next job waits
        fill_rate = h.fill(server, jobs)
        started = time.monotonic()
        gate.touch()
        _wait_empty(server, max(120.0, jobs / 1_000))
        drain_s = time.monotonic() - started
        time.sleep(0.5)  # let the last acknowledgements be committed (ack_interval_ms)
        files = data_files(data_dir)
        total = sum(files.values())
        sizes.append(total)
        per_cycle.append({"fill_events_per_s": fill_rate, "drain_s": drain_s, "files": files})
        say(f"  cycle {cycle}: filled at {fill_rate:,.0f} events/s, drained at "
            f"{jobs / drain_s:,.0f} jobs/s; data files {total / MB:,.1f} MB ("
            + ", ".join(f"{k} {v / MB:,.1f}" for k, v in files.items()) + ")")
    final = server.queue()
    h.finish(server)
    at_rest = data_files(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    if final["processed_total"] != jobs * cycles or final["dead"]:
        h.report.problems.append(f"cycles: processed_total={final['processed_total']} "
                                 f"dead={final['dead']}, {jobs * cycles:,} processed expected")
    say("  after SIGTERM: " + ", ".join(f"{k} {v / MB:,.1f} MB" for k, v in at_rest.items()))
    ratio = sizes[-1] / sizes[0] if sizes[0] else math.inf
    say(f"  cycle {cycles} / cycle 1 = {ratio:.3f}")
    h.report.details["cycles"] = {"cycles": per_cycle, "sizes": sizes,
                                  "at_rest_after_stop": at_rest, "final_queue": final}
    h.report.add(Row(f"data files after cycle {cycles} / cycle 1 ({jobs:,} jobs each)", "x",
                     ratio, None, Target("max", 1.10, "≤ 1.10")))


TOKEN_ROUNDS = 300  # timings of each guess, alternated (ABBA)
TOKEN_LEAK_SEEN = 1.4  # a plain == must measure at least this for the figure to mean much


def _interleaved_medians(check: Callable[[str], None], first: str, second: str,
                         rounds: int) -> tuple[float, float]:
    """Median time of check(first) and check(second), measured alternately (ABBA) so
    that drifts of the machine hit both the same way."""
    a: list[int] = []
    b: list[int] = []

    def timed(arg: str) -> int:
        started = time.perf_counter_ns()
        check(arg)
        return time.perf_counter_ns() - started

    for n in range(rounds):
        if n % 2:
            a.append(timed(first))
            b.append(timed(second))
        else:
            b.append(timed(second))
            a.append(timed(first))
    return statistics.median(a), statistics.median(b)


def token_timing(rounds: int = TOKEN_ROUNDS) -> tuple[float, float]:
    """(the daemon's check, a plain ==): each the median time of a guess wrong only in
    its last character over that of a guess wrong in its first, with a 256 KiB token
    (comparing it stops at the first differing byte or runs to the end). About 1.0 is
    constant time; a plain == shows how far from 1.0 an early exit lands here."""
    import secrets

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from aiohttp.test_utils import make_mocked_request

    from collector.server.http import ApiError, _check_token

    token = secrets.token_hex(128 * 1024)
    flip = {"0": "1"}
    nearly = token[:-1] + flip.get(token[-1], "0")
    wrong = flip.get(token[0], "0") + token[1:]
    requests = {g: make_mocked_request("POST", "/v1/events",
                                       headers={"Authorization": f"Bearer {g}"})
                for g in (nearly, wrong)}

    def plain(guess: str) -> None:
        _, _, given = requests[guess].headers["Authorization"].partition(" ")
        if given.strip() == token:
            raise AssertionError("a wrong guess matched")

    def ours(guess: str) -> None:
        with contextlib.suppress(ApiError):
            _check_token(requests[guess], token)

    near_plain, wrong_plain = _interleaved_medians(plain, nearly, wrong, rounds)
    near, far = _interleaved_medians(ours, nearly, wrong, rounds)
    return near / far, near_plain / wrong_plain


def figure_token(h: Harness) -> None:
    say(f"\n== token: the bearer-token check, a 256 KiB token, {TOKEN_ROUNDS} timings of "
        "each guess (ABBA), in this process")
    ours, plain = token_timing()
    say(f"  nearly-right / all-wrong guess, median time: collector {ours:.3f}x, "
        f"a plain == {plain:.3f}x (same run)")
    h.report.details["token"] = {"collector_ratio": ours, "plain_eq_ratio": plain,
                                 "rounds": TOKEN_ROUNDS, "token_bytes": 256 * 1024}
    if plain < TOKEN_LEAK_SEEN:
        h.report.problems.append(
            f"token: a plain == measured only {plain:.2f}x (< {TOKEN_LEAK_SEEN}x): too noisy "
            "here to see an early exit, so the token figure shows little")
    h.report.add(Row("token check: nearly-right / all-wrong guess time", "x", ours, plain,
                     Target("max", 1.25, "≤ 1.25x"), "plain =="))


def recording_copies(path: Path, copies: int) -> list[bytes]:
    """Every message of the recording (not only UpdateState), `copies` times over, each
    copy a match of its own: its MatchGuid changed, so that the stats store opens a
    match, players and careers for each, as hundreds of players would."""
    lines = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
    guid = json.loads(json.loads(lines[0])["Data"])["MatchGuid"].encode()
    if not guid or any(guid not in line for line in lines if b"MatchGuid" in line):
        raise BenchError(f"{path}: no MatchGuid to vary")
    return [line.replace(guid, b"%032X" % (int(guid, 16) + k)) for k in range(copies)
            for line in lines]


def _pipeline_once(h: Harness, handler: str, bodies: Path, total: int, round_: int,
                   dsn: str | None = None) -> float:
    """POST `total` events (100-event arrays, 8 connections) to a fresh daemon with
    `handler` (with `dsn`, a PostgreSQL-mode node on that database); events/s from the
    first POST until every one of them is processed."""
    data_dir = h.tmp / f"pipeline-{handler}-{round_}{'' if dsn is None else '-pg'}"
    server = h.collector(data_dir, handler=handler, dsn=dsn)
    server.wait_ready()
    argv = [sys.executable, str(LOADGEN), "--port", str(server.port), "--bodies", str(bodies),
            "--connections", str(h.plan.fill_connections),
            "--requests", str(total // EVENTS_PER_ARRAY), "--timeout", "60",
            "--max-time", "600"]
    started = time.monotonic()
    result = run_loader(argv, timeout=660, cwd=h.tmp)
    deadline = started + 600
    while (queue := server.queue())["processed_total"] + queue["dead"] < total:
        if time.monotonic() > deadline:
            raise BenchError(f"pipeline ({handler}): {queue['processed_total']:,} of "
                             f"{total:,} processed after 600 s")
        time.sleep(POLL_S)
    elapsed = time.monotonic() - started
    h.finish(server)
    shutil.rmtree(data_dir, ignore_errors=True)
    if result.ok != total // EVENTS_PER_ARRAY or queue["dead"]:
        raise BenchError(f"pipeline ({handler}): {result.ok} requests answered 202 of "
                         f"{total // EVENTS_PER_ARRAY}, {queue['dead']} dead letters")
    return total / elapsed


def _pipeline_bodies(h: Harness) -> tuple[Path, int]:
    """The pipeline's request bodies (copies of the recording in 100-event arrays) and
    how many events they hold."""
    events = recording_copies(CAPTURE, h.plan.pipeline_copies)
    total = len(events) - len(events) % EVENTS_PER_ARRAY
    bodies = h.tmp / "pipeline.bodies"
    if not bodies.exists():
        write_bodies(bodies, [events[i:i + EVENTS_PER_ARRAY]
                              for i in range(0, total, EVENTS_PER_ARRAY)], array=True)
    return bodies, total


def figure_pipeline(h: Harness) -> None:
    """The whole pipeline on real recorded messages, default handler (stats) against noop,
    in turns: POST, store, apply, until the last event is applied."""
    bodies, total = _pipeline_bodies(h)
    say(f"\n== pipeline: {total:,} real messages ({h.plan.pipeline_copies} copies of the "
        f"recording, each a match of its own) POSTed in 100-event arrays at "
        f"{h.plan.fill_connections} connections, until the last is applied; --handler stats "
        f"(the default) against --handler noop, {h.plan.rounds} rounds in turns")
    stats_runs: list[float] = []
    noop_runs: list[float] = []
    for round_ in range(1, h.plan.rounds + 1):
        for handler, runs in (("noop", noop_runs), ("stats", stats_runs)):
            rate = _pipeline_once(h, handler, bodies, total, round_)
            runs.append(rate)
            say(f"  {round_}  {handler:<5} {rate:,.0f} events/s")
    stats_rate, noop_rate = median_value(stats_runs), median_value(noop_runs)
    assert stats_rate is not None
    assert noop_rate is not None
    say(f"  median rounds: stats {stats_rate:,.0f} events/s, noop {noop_rate:,.0f} events/s: "
        f"{stats_rate / noop_rate:.2f}x")
    h.report.details["pipeline"] = {"events": total, "stats_runs": stats_runs,
                                    "noop_runs": noop_runs}
    h.report.add(Row("pipeline, default handler vs noop", "events/s", stats_rate, noop_rate,
                     Target("min_ratio", 0.25, "≥ 0.25x noop"), reference_label="noop"))

# -- the PostgreSQL mode --------------------------------------------------------------------

PG_FLOOR = 50_000  # events/s, two PostgreSQL-mode nodes, 100-event arrays (issue 20)
PG_LEADER_TIMEOUT_S = 30.0
_METRIC_LINE = re.compile(r"^(collector_queue_commit_[a-z_]+_(?:sum|count))\s+(\S+)$", re.M)


@dataclass(frozen=True)
class PgSetup:
    """One of the configurations the postgres figure measures."""

    key: str  # sqlite, pg1, pg2
    label: str
    nodes: int
    postgres: bool


PG_SETUPS = (
    PgSetup("sqlite", "1 SQLite-mode node", 1, False),
    PgSetup("pg1", "1 PostgreSQL-mode node", 1, True),
    PgSetup("pg2", "2 PostgreSQL-mode nodes", 2, True),
)


class PgDatabase:
    """Where the PostgreSQL-mode nodes keep their log: the given DSN, or a private cluster
    started for this run (scripts/pgcluster.py, fsync on) with a fresh database per run."""

    def __init__(self, dsn: str | None) -> None:
        self.given = dsn
        self.cluster: Any = None  # scripts.pgcluster.Cluster, imported on demand
        if dsn is None:
            _import_collector()
            from scripts.pgcluster import missing_reason, start_cluster

            reason = missing_reason()
            if reason is not None:
                raise BenchError(f"no --postgres DSN and no private cluster: {reason}")
            try:
                self.cluster = start_cluster()
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None

    def describe(self) -> str:
        if self.cluster is None:
            return "the database of --postgres (its log grows by the bench's events)"
        version = self.cluster.psql("SHOW server_version")
        settings = self.cluster.psql(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'wal_sync_method')")
        return (f"a private cluster started for this run (PostgreSQL {version}, port "
                f"{self.cluster.port}, {settings}), a fresh database per run")

    def database(self) -> str:
        """The DSN for the next run."""
        if self.cluster is None:
            assert self.given is not None
            return self.given
        dsn: str = self.cluster.dsn(self.cluster.create_database("bench"))
        return dsn

    def commits(self) -> int | None:
        """Transactions committed in the cluster so far (the private cluster only)."""
        if self.cluster is None:
            return None
        return int(self.cluster.psql("SELECT sum(xact_commit) FROM pg_stat_database"))

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


def commit_metrics(server: Server) -> dict[str, float]:
    """The group-commit counters of a node's /metrics (..._sum and ..._count)."""
    status, body = http_request(server.port, "GET", "/metrics")
    if status != 200:
        raise BenchError(f"{server.name}: GET /metrics answered {status}")
    return {m[1]: float(m[2]) for m in _METRIC_LINE.finditer(body.decode())}


def _commit_figures(before: dict[str, float], after: dict[str, float], seconds: float
                    ) -> dict[str, float]:
    """Group commits of one node over a run: per second, requests and ms per commit."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    commits = delta("collector_queue_commit_batch_requests_count")
    return {
        "commits": commits,
        "commits_per_s": commits / seconds if seconds else 0.0,
        "requests_per_commit": (delta("collector_queue_commit_batch_requests_sum") / commits
                                if commits else 0.0),
        "commit_ms": (1000 * delta("collector_queue_commit_duration_seconds_sum") / commits
                      if commits else 0.0),
    }


def combine_loads(results: Sequence[LoadResult]) -> LoadResult:
    """Load generators run at once as one: answers and errors summed over the longest
    duration, CPU time summed, and each latency percentile the higher of theirs (the
    generators report percentiles, which cannot be merged exactly)."""
    if len(results) == 1:
        return results[0]
    errors: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r.errors)
        statuses.update(r.statuses)
    keys = set.intersection(*(set(r.latency_us) for r in results))
    return LoadResult(
        requests=sum(r.requests for r in results),
        duration_s=max(r.duration_s for r in results),
        errors={k: errors[k] for k in sorted(errors)},
        latency_us={k: max(r.latency_us[k] for r in results) for k in sorted(keys)},
        statuses={k: statuses[k] for k in sorted(statuses)},
        loader_cpu_s=sum(r.loader_cpu_s for r in results),
    )


def _wait_leader(servers: Sequence[Server], postgres: bool) -> Server:
    """The node that runs the worker: the one node in the SQLite mode; in the PostgreSQL
    mode, the one whose /v1/queue says `leader` (waiting for the election)."""
    if not postgres:
        return servers[0]
    deadline = time.monotonic() + PG_LEADER_TIMEOUT_S
    while True:
        leaders = [s for s in servers if s.queue().get("leader")]
        if len(leaders) == 1:
            return leaders[0]
        if time.monotonic() > deadline:
            raise BenchError(f"{len(leaders)} leaders after {PG_LEADER_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def _pg_once(h: Harness, setup: PgSetup, db: PgDatabase | None, round_: int
             ) -> dict[str, Any]:
    """One run of `setup`: fresh node(s), warm-up, the measured load split evenly over the
    nodes (one load generator each), then wait for the leader to apply everything."""
    plan = h.plan
    dsn = db.database() if db is not None else None
    servers = [h.collector(h.tmp / f"pg-{setup.key}-{round_}-{n}", dsn=dsn)
               for n in range(setup.nodes)]
    for server in servers:
        server.wait_ready()
    leader = _wait_leader(servers, setup.postgres)
    per_node = plan.connections // setup.nodes
    bodies = h.bodies_array
    h.load_many(servers, bodies, connections=per_node, duration_s=plan.warmup_s)
    before = _settle(leader, 60.0)
    metrics_before = [commit_metrics(s) for s in servers]
    xacts_before = None if db is None else db.commits()
    loads = h.load_many(servers, bodies, connections=per_node, duration_s=plan.duration_s)
    at_end = leader.queue()
    end_time = time.monotonic()
    xacts_after = None if db is None else db.commits()
    metrics_after = [commit_metrics(s) for s in servers]
    _wait_empty(leader, 120.0)
    catch_up = time.monotonic() - end_time
    after = _settle(leader, 60.0)
    leaders = sum(bool(s.queue().get("leader")) for s in servers) if setup.postgres else 1
    for server in servers:
        h.finish(server)
        shutil.rmtree(server.argv[server.argv.index("--data-dir") + 1], ignore_errors=True)
    combined = combine_loads(loads)
    seconds = combined.duration_s
    answered = combined.ok * EVENTS_PER_ARRAY
    stored = after["last_seq"] - before["last_seq"]
    applied = after["processed_total"] - before["processed_total"]
    dead = after["dead"] - before["dead"]
    lost = max(0, answered - applied)
    in_flight_max = plan.connections * EVENTS_PER_ARRAY
    problems = []
    if not answered <= stored <= answered + in_flight_max:
        problems.append(f"stored {stored:,} events for {answered:,} acknowledged (at most "
                        f"{in_flight_max:,} more may have been in flight at the end)")
    if applied != stored or dead:
        problems.append(f"{stored:,} events stored, {applied:,} applied, {dead} dead letters")
    if lost:
        problems.append(f"{lost:,} acknowledged events not applied")
    if leaders != 1:
        problems.append(f"{leaders} nodes say they lead")
    for text in problems:
        h.report.problems.append(f"postgres, {setup.label}, round {round_}: {text}")
    commits = [_commit_figures(b, a, seconds)
               for b, a in zip(metrics_before, metrics_after, strict=True)]
    return {
        "load": combined, "per_node": loads, "answered_events": answered, "stored": stored,
        "applied": applied, "dead": dead, "lost": lost, "all_applied": not problems,
        "backlog_at_end": int(at_end["pending"]) + int(at_end["in_flight"]),
        "catch_up_s": catch_up, "commits": commits,
        "db_commits_per_s": (None if xacts_before is None or xacts_after is None
                             else (xacts_after - xacts_before) / seconds),
        "leader_port": leader.port,
    }


def _fmt_pg_run(run: dict[str, Any]) -> str:
    load: LoadResult = run["load"]
    commits = "; ".join(
        f"node {n + 1}: {c['commits_per_s']:,.0f} commits/s of {c['requests_per_commit']:.1f} "
        f"requests, {c['commit_ms']:.1f} ms each" for n, c in enumerate(run["commits"]))
    db = run["db_commits_per_s"]
    return (f"{_fmt_load(load, EVENTS_PER_ARRAY)}\n"
            f"        every acknowledged event applied: "
            f"{'yes' if run['all_applied'] else 'NO'} ({run['answered_events']:,} acknowledged, "
            f"{run['stored']:,} stored, {run['applied']:,} applied, {run['lost']:,} lost; "
            f"backlog at the end {run['backlog_at_end']:,}, applied {run['catch_up_s']:.2f} s "
            f"later)\n"
            f"        group commits: {commits}"
            + ("" if db is None else f"; the cluster committed {db:,.0f} transactions/s"))


def figure_postgres(h: Harness) -> None:
    """100-event arrays at one SQLite-mode node, one PostgreSQL-mode node and two
    PostgreSQL-mode nodes on one database (the load split over them), in turns."""
    plan = h.plan
    c = plan.connections
    db = PgDatabase(h.postgres_dsn)
    try:
        say(f"\n== postgres: POSTs of 100-event arrays ({c} connections in all; two nodes get "
            f"a load generator each, {c // 2} connections each), {plan.duration_s} s each "
            f"(after {plan.warmup_s} s of warm-up), {plan.rounds} rounds in turns; "
            "--handler noop")
        say(f"  PostgreSQL: {db.describe()}")
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in PG_SETUPS}
        for round_ in range(1, plan.rounds + 1):
            for setup in PG_SETUPS:
                run = _pg_once(h, setup, db if setup.postgres else None, round_)
                runs[setup.key].append(run)
                say(f"  {round_}  {setup.label:<24} {_fmt_pg_run(run)}")
                if setup.nodes > 1:
                    for n, one in enumerate(run["per_node"], 1):
                        lat = one.latency_us
                        say(f"        node {n}: {one.per_second * EVENTS_PER_ARRAY:,.0f} "
                            f"events/s, p50 {lat['p50'] / 1000:.2f} ms, "
                            f"p99 {lat['p99'] / 1000:.2f} ms")
        applying = _pg_pipeline(h, db)
    finally:
        db.close()
    medians: dict[str, dict[str, Any]] = {}
    for setup in PG_SETUPS:
        load = median_run([r["load"] for r in runs[setup.key]], lambda r: r.per_second)
        medians[setup.key] = next(r for r in runs[setup.key] if r["load"] is load)
    sqlite = medians["sqlite"]["load"]
    lost_all = sum(r["lost"] for rs in runs.values() for r in rs)
    say("  median runs: " + "; ".join(
        f"{s.label} {medians[s.key]['load'].per_second * EVENTS_PER_ARRAY:,.0f} events/s"
        for s in PG_SETUPS))
    for setup in PG_SETUPS:
        load = medians[setup.key]["load"]
        conns = f"c{c}" if setup.nodes == 1 else f"{setup.nodes}x c{c // setup.nodes}"
        veto = ""
        if setup.key == "pg2" and not all(r["all_applied"] for r in runs["pg2"]):
            veto = "events lost or not applied"
        target = (Target("min", PG_FLOOR, f"≥ {PG_FLOOR:,} events/s, none lost")
                  if setup.key == "pg2" else None)
        ref = None if setup.key == "sqlite" else sqlite.per_second * EVENTS_PER_ARRAY
        h.report.add(Row(f"postgres: 100-event arrays, {setup.label}, {conns}", "events/s",
                         load.per_second * EVENTS_PER_ARRAY, ref, target,
                         "" if ref is None else "1 SQLite node", veto=veto))
        for q in ("p50", "p99"):
            ref_ms = None if setup.key == "sqlite" else sqlite.latency_us[q] / 1000
            h.report.add(Row(f"postgres: {q} latency, {setup.label}", "ms",
                             load.latency_us[q] / 1000, ref_ms, None,
                             "" if ref_ms is None else "1 SQLite node"))
    h.report.add(Row("postgres: acknowledged events not applied, every run", "events",
                     float(lost_all), None, Target("max", 0, "none")))
    h.report.add(Row("postgres: pipeline, stats handler, 1 PostgreSQL-mode node", "events/s",
                     applying["postgres"], applying["sqlite"], None, "1 SQLite node"))

    def as_json(run: dict[str, Any]) -> dict[str, Any]:
        return {k: (dataclasses.asdict(v) if isinstance(v, LoadResult) else
                    [dataclasses.asdict(x) for x in v] if k == "per_node" else v)
                for k, v in run.items()}

    h.report.details["postgres"] = {
        "database": "given (--postgres)" if h.postgres_dsn else "private cluster",
        "median": {k: as_json(v) for k, v in medians.items()},
        "rounds": {k: [as_json(r) for r in rs] for k, rs in runs.items()},
        "pipeline_stats": applying,
    }


def _pg_pipeline(h: Harness, db: PgDatabase) -> dict[str, float]:
    """The pipeline figure's load (real recorded matches, until the last event is
    applied) with the stats handler, on one SQLite-mode node and one PostgreSQL-mode
    node in turns: what the leader applies, statistics included. Median rounds."""
    bodies, total = _pipeline_bodies(h)
    say(f"  pipeline with --handler stats: {total:,} real messages "
        f"({h.plan.pipeline_copies} copies of the recording), {h.plan.rounds} rounds in turns")
    rates: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for round_ in range(1, h.plan.rounds + 1):
        for key in rates:
            dsn = db.database() if key == "postgres" else None
            rate = _pipeline_once(h, "stats", bodies, total, round_, dsn=dsn)
            rates[key].append(rate)
            say(f"  {round_}  stats, 1 {'PostgreSQL' if dsn else 'SQLite'}-mode node  "
                f"{rate:,.0f} events/s")
    medians = {k: median_value(v) or 0.0 for k, v in rates.items()}
    say(f"  median rounds: stats on SQLite {medians['sqlite']:,.0f} events/s, on PostgreSQL "
        f"{medians['postgres']:,.0f} events/s")
    return medians


# -- the dashboard --------------------------------------------------------------------------

#: The pages the figure measures: page -> (its path, the JSON API calls its script makes
#: when it opens, in collector/dashboard/static/js/pages/<page>.js). {match}, {player} and
#: {session} are filled from the history. /live is left out: it follows one stream.
DASHBOARD_PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "home": ("/", ("/v1/matches?limit=15", "/v1/sessions?limit=8", "/v1/players?limit=12")),
    "match": ("/matches/{match}", ("/v1/matches/{match}",)),
    "player": ("/players/{player}", ("/v1/players/{player}",
                                     "/v1/players/{player}/matches?limit=50",
                                     "/v1/sessions?player={player}&limit=10")),
    "session": ("/sessions/{session}", ("/v1/sessions/{session}",)),
    "system": ("/system", ("/v1/queue", "/metrics", "/v1/dead?limit=50&offset=0")),
}
DASHBOARD_REFERENCE = "/healthz"
DASHBOARD_SLOW_MS = 50.0  # a call slower than this (p50, here) is looked into
HISTORY_T0 = 1_780_000_000.0  # the first sitting's start (2026)
HISTORY_TEAM_SIZE = 3
HISTORY_TICK_RATE = 4  # UpdateStates a game second in each match's live stretch
HISTORY_LIVE_S = 3  # game seconds of that stretch (the derived statistics come from it)
HISTORY_BATCH = 500  # jobs a StatsStore.apply_run (one transaction)
HISTORY_ARENAS = ("Stadium_P", "cs_p", "EuroStadium_Night_P", "UtopiaStadium_P", "Park_P",
                  "Wasteland_S_P", "NeoTokyo_Standard_P", "TrainStation_P")
HISTORY_COLORS = (("1873FF", "E5E5E5"), ("C26418", "E5E5E5"))
_NAME_HEADS = ("Zeph", "Kak", "Mira", "Turbo", "Lum", "Okapi", "Vex", "Grizz", "Picco",
               "Sunny", "Nick", "Zone", "Kilo", "Dusk", "Orbit", "Pixel")
_NAME_TAILS = ("yr", "tus", "_tom", "en", " D", "lo", "Killa", "m", "x", "99", "_rl", "ster")


@dataclass(frozen=True)
class HistoryShape:
    """The history the dashboard figure is measured on."""

    matches: int
    players: int
    sittings: int  # evenings of play: the same six play their matches in a row
    seed: int = 7


def history_names(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """`count` distinct (name, primary id) pairs, Steam and Epic ids as the game sends."""
    names: list[str] = []
    while len(names) < count:
        name = rng.choice(_NAME_HEADS) + rng.choice(_NAME_TAILS)
        name += str(rng.randint(2, 9)) if name in names else ""
        if name not in names:
            names.append(name)
    return [(name, f"Steam|7656119{rng.randrange(10**10):010d}|0" if k % 2 else
             f"Epic|{rng.getrandbits(128):032x}|0") for k, name in enumerate(names)]


class _HistoryMatch:
    """One 3v3 match as the Stats API sends it, cut short: a live stretch of
    HISTORY_LIVE_S game seconds (every car shown, so each line gets its derived
    statistics), then each goal (the snapshot with the team score up, GoalScored), the
    final scoreboard and MatchEnded. received_at spreads them over the match's length."""

    def __init__(self, rng: random.Random, roster: Sequence[tuple[str, str]], start: float
                 ) -> None:
        self.rng = rng
        self.start = start
        self.guid = f"{rng.getrandbits(128):032X}"
        self.arena = rng.choice(HISTORY_ARENAS)
        order = list(roster)
        rng.shuffle(order)
        self.players = [(name, pid, k // HISTORY_TEAM_SIZE, k + 1)
                        for k, (name, pid) in enumerate(order)]
        self.lines = {name: dict.fromkeys(("Score", "Goals", "Shots", "Assists", "Saves",
                                           "Touches", "Demos"), 0) for name, *_ in self.players}
        self.cars = {name: [rng.uniform(0, 100), rng.uniform(0, 2300)]
                     for name, *_ in self.players}
        self.score = [0, 0]
        goals = [rng.randint(0, 5), rng.randint(0, 5)]
        self.overtime = goals[0] == goals[1]
        if self.overtime:
            goals[rng.randint(0, 1)] += 1
        self.goals = [0] * goals[0] + [1] * goals[1]
        rng.shuffle(self.goals)
        if self.overtime:  # the deciding goal comes last
            self.goals.remove(last := 0 if goals[0] > goals[1] else 1)
            self.goals.append(last)
        self.winner = 0 if goals[0] > goals[1] else 1
        self.length = 300.0 + (rng.uniform(10, 150) if self.overtime else 0.0)
        self.jobs: list[tuple[dict[str, Any], float]] = []

    @property
    def end(self) -> float:
        return self.start + self.length

    def event(self, name: str, data: dict[str, Any], at: float) -> None:
        self.jobs.append(({"Event": name, "Data": json.dumps({"MatchGuid": self.guid, **data})},
                          at))

    def state(self, at: float, clock: int, *, cars: bool, overtime: bool = False,
              winner: int | None = None) -> None:
        players = []
        for name, pid, team, shortcut in self.players:
            line: dict[str, Any] = {"Name": name, "PrimaryId": pid, "Shortcut": shortcut,
                                    "TeamNum": team, **self.lines[name]}
            if cars:
                boost, speed = self.cars[name]
                line.update({"bHasCar": True, "Boost": round(boost),
                             "Speed": round(speed * 0.036, 3), "bBoosting": boost > 40,
                             "bOnGround": speed < 1900, "bOnWall": 1500 < speed < 1600,
                             "bPowersliding": speed < 400, "bSupersonic": speed >= 2200})
            players.append({k: v for k, v in line.items() if v not in (0, False)}
                           | {"TeamNum": team, "Name": name})
        self.event("UpdateState", {"Players": players, "Game": {
            "Teams": [{"Name": team, "TeamNum": num, "Score": self.score[num],
                       "ColorPrimary": HISTORY_COLORS[num][0],
                       "ColorSecondary": HISTORY_COLORS[num][1]}
                      for num, team in enumerate(("Blue", "Orange"))],
            "TimeSeconds": clock, "bOvertime": overtime,
            "Ball": {"Speed": round(self.rng.uniform(0, 90), 2), "TeamNum": 255},
            "bReplay": False, "bHasWinner": winner is not None,
            "Winner": "" if winner is None else ("Blue", "Orange")[winner],
            "Arena": self.arena}}, at)

    def messages(self) -> list[tuple[dict[str, Any], float]]:
        rng = self.rng
        ticks = HISTORY_LIVE_S * HISTORY_TICK_RATE
        for tick in range(ticks + 1):
            for name, car in self.cars.items():
                car[0] = min(100.0, max(0.0, car[0] + rng.uniform(-12, 9)))
                car[1] = min(2300.0, max(0.0, car[1] + rng.uniform(-500, 500)))
                if rng.random() < 0.1:
                    self.lines[name]["Touches"] += 1
                    self.lines[name]["Score"] += 2
            self.state(self.start + tick / HISTORY_TICK_RATE, 300 - tick // HISTORY_TICK_RATE,
                       cars=True)
        for n, team in enumerate(self.goals, start=1):
            at = self.start + self.length * n / (len(self.goals) + 1)
            mates = [p for p in self.players if p[2] == team]
            scorer = rng.choice(mates)
            assister = rng.choice([p for p in mates if p is not scorer]) \
                if rng.random() < 0.6 else None
            for who, field_, points in ((scorer, "Goals", 100), (assister, "Assists", 50)):
                if who is not None:
                    self.lines[who[0]][field_] += 1
                    self.lines[who[0]]["Score"] += points
            self.lines[scorer[0]]["Shots"] += 1
            self.score[team] += 1
            elapsed = at - self.start
            self.state(at, round(abs(300 - elapsed)), cars=False, overtime=elapsed > 300)
            speed = round(rng.uniform(40, 125), 2)
            goal: dict[str, Any] = {
                "GoalSpeed": speed, "GoalTime": round(rng.uniform(3, 40), 2),
                "ImpactLocation": {"X": round(rng.uniform(-800, 800), 1),
                                   "Y": 5120.0 if team == 0 else -5120.0,
                                   "Z": round(rng.uniform(95, 600), 1)},
                "Scorer": {"Name": scorer[0], "Shortcut": scorer[3], "TeamNum": team},
                "BallLastTouch": {"Player": scorer[0], "Speed": speed}}
            if assister is not None:
                goal["Assister"] = {"Name": assister[0], "Shortcut": assister[3],
                                    "TeamNum": team}
            self.event("GoalScored", goal, at + 0.05)
        for line in self.lines.values():  # the rest of the match, in its totals
            extra_shots, saves = rng.randint(0, 4), rng.randint(0, 3)
            line["Shots"] += extra_shots
            line["Saves"] += saves
            line["Touches"] += rng.randint(10, 40)
            line["Demos"] += rng.randint(0, 2)
            line["Score"] += 20 * extra_shots + 50 * saves + 2 * line["Touches"]
        self.state(self.end, round(self.length - 300), cars=False, overtime=self.overtime,
                   winner=self.winner)
        self.event("MatchEnded", {"WinnerTeamNum": self.winner}, self.end + 0.05)
        return self.jobs


def history_messages(shape: HistoryShape) -> list[tuple[dict[str, Any], float]]:
    """The whole history's messages, (payload, received_at), in the order played: each
    sitting six players drawn from the pool playing their share of the matches in a
    row (a minute or two between matches), sittings 6 to 30 hours apart."""
    rng = random.Random(shape.seed)
    pool = history_names(shape.players, rng)
    out: list[tuple[dict[str, Any], float]] = []
    at = HISTORY_T0
    for sitting in range(shape.sittings):
        roster = rng.sample(pool, 2 * HISTORY_TEAM_SIZE)
        count = shape.matches // shape.sittings + (sitting < shape.matches % shape.sittings)
        for _ in range(count):
            match = _HistoryMatch(rng, roster, at)
            out.extend(match.messages())
            at = match.end + rng.uniform(45, 150)
        at += rng.uniform(6, 30) * 3600
    return out


def build_history(data_dir: Path, shape: HistoryShape, log: Path) -> dict[str, Any]:
    """stats.db in `data_dir` holding `shape`'s history, applied through the real
    StatsStore.apply_run (HISTORY_BATCH jobs a transaction, durability "normal": this
    builds a file, it measures nothing). The store's log lines of warning and above go
    to `log` (JSON lines), under "warnings" in what is returned with the counts."""
    import asyncio

    _import_collector()
    from collector.jobs import Job
    from collector.stats.store import StatsStore

    started = time.monotonic()
    messages = history_messages(shape)
    generated = time.monotonic() - started
    jobs = [Job(seq=n, payload=payload, received_at=at, source=None, sequence=None)
            for n, (payload, at) in enumerate(messages, start=1)]

    async def apply() -> list[str]:
        store = StatsStore(data_dir, durability="normal")
        await store.open()
        outcomes: list[str] = []
        try:
            for i in range(0, len(jobs), HISTORY_BATCH):
                outcomes += await store.apply_run(jobs[i:i + HISTORY_BATCH])
        finally:
            await store.close()
        return outcomes

    with _quiet_logs(log):
        outcomes = asyncio.run(apply())
    seconds = time.monotonic() - started
    db = data_dir / "stats.db"
    counts = _history_counts(db)
    if counts["matches"] != shape.matches or counts["lines_without_stats"] or \
            counts["ended"] != shape.matches:
        raise BenchError(f"dashboard history: {counts} for {shape}")
    warnings = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {"events": len(jobs), "seconds": seconds, "generate_s": generated,
            "db_bytes": db.stat().st_size, "outcomes": dict(collections.Counter(outcomes)),
            "warnings": warnings, **counts}


@contextlib.contextmanager
def _quiet_logs(path: Path) -> Iterator[None]:
    """collector's logging (warning and above) into `path` for the block, then the
    process's logging configuration as it was."""
    import logging

    import structlog

    from collector.logs import configure_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    with path.open("a") as out:
        configure_logging("warning", "json", stream=out, cache=False)
        try:
            yield
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)
            structlog.configure(**config)


def _history_counts(db: Path) -> dict[str, int]:
    """What stats.db holds, read directly (sessions with the default 30 minute gap)."""
    import sqlite3

    from collector.stats.sessions import sessions_page

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        page = sessions_page(conn, gap_s=30 * 60.0, limit=2**31)
        assert page is not None
        return {"matches": one("SELECT count(*) FROM matches"),
                "ended": one("SELECT count(*) FROM matches WHERE winner IS NOT NULL"),
                "players": one("SELECT count(*) FROM players"),
                "lines": one("SELECT count(*) FROM match_players"),
                "lines_without_stats": one("SELECT count(*) FROM match_players "
                                           "WHERE stats IS NULL"),
                "goals": one("SELECT count(*) FROM goals"),
                "sessions": len(page["sessions"]),
                "newest_match": one("SELECT max(id) FROM matches"),
                "busiest_player": one("SELECT id FROM players ORDER BY matches DESC, id "
                                      "LIMIT 1"),
                "busiest_player_matches": one("SELECT max(matches) FROM players")}
    finally:
        conn.close()


def _import_collector() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (q in 0..100) of a non-empty sample."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)]


class _Client:
    """One kept-alive connection, as a browser keeps one: (status, body, seconds)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30.0)

    def get(self, path: str) -> tuple[bytes, float]:
        started = time.perf_counter()
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            status, body = resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # once more on a new connection (the server closed it)
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30.0)
            started = time.perf_counter()
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            status, body = resp.status, resp.read()
        elapsed = time.perf_counter() - started
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:200]!r}")
        return body, elapsed

    def close(self) -> None:
        self.conn.close()


_STATIC_REF = re.compile(r'(?:href|src)="(/static/[^"?#]+)')
_JS_IMPORT = re.compile(r'(?:\bfrom\s*|\bimport\s*)"(\.{1,2}/[^"]+)"')
_PAGE_IMPORT = re.compile(r"import\(\s*`([^`$]*)\$\{page\}([^`]*)`\s*\)")
_DATA_PAGE = re.compile(r'data-page="([a-z]+)"')


def page_files(client: _Client, path: str) -> tuple[int, dict[str, int]]:
    """The shell's bytes at `path`, and every static file the page loads with its bytes
    (uncompressed, as served): what its <link> and <script> tags name, and the ES
    modules main.js and the page's module import, followed to the end."""
    shell, _ = client.get(path)
    text = shell.decode()
    page = _DATA_PAGE.search(text)
    if page is None:
        raise BenchError(f"GET {path}: no data-page in the shell")
    files: dict[str, int] = {}
    todo = _STATIC_REF.findall(text)
    while todo:
        url = todo.pop(0)
        if url in files:
            continue
        body, _ = client.get(url)
        files[url] = len(body)
        if not url.endswith(".js") or "/vendor/" in url:
            continue
        source = body.decode()
        found = list(_JS_IMPORT.findall(source))
        found += [a + page.group(1) + b for a, b in _PAGE_IMPORT.findall(source)]
        todo += [posixpath.normpath(posixpath.join(posixpath.dirname(url), rel))
                 for rel in found]
    if not any(f"/pages/{page.group(1)}.js" in url for url in files):
        raise BenchError(f"GET {path}: the page's module js/pages/{page.group(1)}.js was not "
                         "found among main.js's imports")
    return len(shell), files


def _dashboard_targets(client: _Client, built: dict[str, Any]) -> dict[str, str]:
    """The ids the pages are opened with: the newest match, the player with the most
    matches, the session the home page lists first."""
    sessions = json.loads(client.get("/v1/sessions?limit=1")[0])["sessions"]
    if not sessions:
        raise BenchError("dashboard: the history has no session")
    return {"match": str(built["newest_match"]), "player": str(built["busiest_player"]),
            "session": sessions[0]["id"]}


def _page_load(clients: Sequence[_Client], calls: Sequence[str],
               pool: concurrent.futures.ThreadPoolExecutor) -> float:
    """A page's calls at once, each on a connection of its own (the page awaits them
    with Promise.all): seconds until the last answer."""
    started = time.perf_counter()
    futures = [pool.submit(client.get, call) for client, call in zip(clients, calls,
                                                                     strict=False)]
    for future in futures:
        future.result()
    return time.perf_counter() - started


def figure_dashboard(h: Harness) -> None:
    """The dashboard's pages on a realistic history: each JSON API call a page makes
    (latency p50/p95, bytes), each page's calls at once, and each page's weight."""
    plan = h.plan
    shape = HistoryShape(plan.history_matches, plan.history_players, plan.history_sittings)
    say(f"\n== dashboard: a history of {shape.matches:,} matches (3v3, {shape.players} players,"
        f" {shape.sittings} sittings) built through StatsStore.apply_run; `collector serve` "
        f"(default handler) on it; {plan.dashboard_rounds} rounds, each call in turn on one "
        f"kept-alive connection with {DASHBOARD_REFERENCE} (the reference), then each page's "
        "calls at once")
    data_dir = h.tmp / "dashboard-data"
    built = build_history(data_dir, shape, h.tmp / "dashboard-build.log")
    h.report.problems += [f"dashboard history build log: {line[:400]}"
                          for line in built["warnings"]]
    say(f"  built in {built['seconds']:.1f} s ({built['generate_s']:.1f} s of it generating):"
        f" {built['events']:,} events, {built['matches']:,} matches, {built['players']} "
        f"players, {built['lines']:,} lines (each with its derived statistics), "
        f"{built['goals']:,} goals, {built['sessions']:,} player sessions; stats.db "
        f"{built['db_bytes'] / MB:.1f} MB")
    server = h.collector(data_dir, handler="stats")
    server.wait_ready()
    client = _Client(server.port)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3)
    page_clients = [_Client(server.port) for _ in range(3)]
    try:
        ids = _dashboard_targets(client, built)
        pages = {page: (path.format(**ids), tuple(call.format(**ids) for call in calls))
                 for page, (path, calls) in DASHBOARD_PAGES.items()}
        calls = [DASHBOARD_REFERENCE] + [c for _, cs in pages.values() for c in cs]
        times: dict[str, list[float]] = {call: [] for call in calls}
        sizes: dict[str, int] = {}
        loads: dict[str, list[float]] = {page: [] for page in pages}
        for round_ in range(plan.dashboard_rounds + 1):  # round 0 warms up, not counted
            for call in calls:
                body, seconds = client.get(call)
                sizes[call] = len(body)
                if round_:
                    times[call].append(seconds * 1000)
            for page, (_, page_calls) in pages.items():
                seconds = _page_load(page_clients, page_calls, pool)
                if round_:
                    loads[page].append(seconds * 1000)
        weights = {page: page_files(client, path) for page, (path, _) in pages.items()}
    finally:
        client.close()
        for one in page_clients:
            one.close()
        pool.shutdown()
    h.finish(server)
    shutil.rmtree(data_dir, ignore_errors=True)

    def p(call: str, q: float) -> float:
        return percentile(times[call], q)

    ref50, ref95 = p(DASHBOARD_REFERENCE, 50), p(DASHBOARD_REFERENCE, 95)
    say(f"  pages opened with match {ids['match']} (the newest), player {ids['player']} "
        f"({built['busiest_player_matches']} matches, the most), session {ids['session']} "
        f"(the newest of {built['sessions']:,} player sessions)")
    say(f"  each call, p50 / p95 over {plan.dashboard_rounds} rounds, and its answer:")
    width = max(len(call) for call in calls)
    for page, (_, page_calls) in [("reference", ("", (DASHBOARD_REFERENCE,))),
                                  *pages.items()]:
        for call in page_calls:
            slow = "  SLOW (> 50 ms p50)" if p(call, 50) > DASHBOARD_SLOW_MS else ""
            say(f"  {page:<9} GET {call:<{width}}  {p(call, 50):7.2f} / {p(call, 95):7.2f} ms"
                f"  {p(call, 50) / ref50:6.1f}x /healthz  {sizes[call]:>9,} bytes{slow}")
    say("  each page, its calls at once (p50 / p95), its data and its weight (uncompressed, "
        "as served: the shell + every static file it loads):")
    details_pages: dict[str, Any] = {}
    for page, (path, page_calls) in pages.items():
        shell, files = weights[page]
        static = sum(files.values())
        data = sum(sizes[call] for call in page_calls)
        load50, load95 = percentile(loads[page], 50), percentile(loads[page], 95)
        say(f"  {page:<9} {len(page_calls)} call(s) {load50:7.2f} / {load95:7.2f} ms; data "
            f"{data:>9,} bytes; weight {shell + static:>9,} bytes (shell {shell:,} + "
            f"{len(files)} files {static:,})")
        details_pages[page] = {
            "path": path, "calls": {call: {"p50_ms": p(call, 50), "p95_ms": p(call, 95),
                                           "bytes": sizes[call]} for call in page_calls},
            "load_p50_ms": load50, "load_p95_ms": load95, "data_bytes": data,
            "shell_bytes": shell, "files": files, "weight_bytes": shell + static}
        h.report.add(Row(f"dashboard {page} page: its {len(page_calls)} call(s) at once, p50",
                         "ms", load50, ref50, None, "GET /healthz"))
    say(f"  reference: GET {DASHBOARD_REFERENCE} {ref50:.2f} / {ref95:.2f} ms (p50 / p95)")
    slowest = max(calls[1:], key=lambda call: p(call, 50))
    heaviest = max(details_pages, key=lambda page: details_pages[page]["weight_bytes"])
    say(f"  slowest call: GET {slowest}, p50 {p(slowest, 50):.2f} ms, p95 "
        f"{p(slowest, 95):.2f} ms; heaviest page: {heaviest}, "
        f"{details_pages[heaviest]['weight_bytes']:,} bytes")
    for call in calls[1:]:
        if p(call, 50) > DASHBOARD_SLOW_MS:
            h.report.problems.append(f"dashboard: GET {call} p50 {p(call, 50):.1f} ms "
                                     f"(> {DASHBOARD_SLOW_MS:.0f} ms) on this history")
    h.report.details["dashboard"] = {
        "history": dataclasses.asdict(shape) | built, "ids": ids,
        "rounds": plan.dashboard_rounds,
        "reference": {"call": DASHBOARD_REFERENCE, "p50_ms": ref50, "p95_ms": ref95,
                      "bytes": sizes[DASHBOARD_REFERENCE]},
        "pages": details_pages, "slowest_call": slowest, "heaviest_page": heaviest}
    h.report.add(Row(f"dashboard slowest call, p50: GET {slowest}", "ms", p(slowest, 50),
                     ref50, None, "GET /healthz"))
    h.report.add(Row(f"dashboard page weight, heaviest ({heaviest})", "KiB",
                     details_pages[heaviest]["weight_bytes"] / 1024, None))


FIGURE_FUNCS: dict[str, Callable[[Harness], None]] = {
    "single": figure_single,
    "arrays": figure_arrays,
    "latency": figure_latency,
    "drain": figure_drain,
    "memory": figure_memory,
    "cycles": figure_cycles,
    "token": figure_token,
    "pipeline": figure_pipeline,
    "dashboard": figure_dashboard,
    "postgres": figure_postgres,
}

FIGURE_ROWS = {  # the rows a figure adds, for the table when it could not be measured
    "single": "single-event POSTs", "arrays": "100-event array POSTs",
    "latency": "p99 latency", "drain": "drain", "memory": "memory and start-up",
    "cycles": "fill/drain cycles", "token": "token check",
    "pipeline": "pipeline, default handler vs noop", "dashboard": "dashboard",
    "postgres": "postgres: 100-event arrays, SQLite and PostgreSQL modes",
}


# -- the table ------------------------------------------------------------------------------


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    if unit in ("req/s", "events/s", "jobs/s", "events"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "KiB":
        return f"{value:,.1f} KiB"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.2f} {unit}" if value >= 0.01 or value == 0 else f"{value:.4f} {unit}"


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table."""
    head = ["figure", "collector", "reference", "ratio", "target", "result"]
    lines = [head]
    for row in rows:
        if row.error:
            lines.append([row.figure, "error", "—", "—", "—", "ERROR"])
            continue
        ref = fmt_value(row.reference, row.unit)
        if row.reference is not None and row.reference_label:
            ref += f" ({row.reference_label})"
        ratio = row.ratio
        passed = row.passed
        lines.append([
            row.figure, fmt_value(row.collector, row.unit), ref,
            "—" if ratio is None else f"{ratio:.3f}x",
            row.target.text if row.target else "(context)",
            "—" if passed is None else ("pass" if passed else
                                        f"MISSED ({row.veto})" if row.veto else "MISSED"),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                   + " |")
        if n == 0:
            out.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    import aiohttp

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "load_average": os.getloadavg()}


def collector_source() -> str:
    """Where the servers' `collector` package comes from, and its git state."""
    try:
        where = subprocess.run(
            [sys.executable, "-c", "import collector; print(collector.__file__)"],
            capture_output=True, text=True, timeout=30, env=base_env(), cwd=REPO, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot import collector: {exc}") from None
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "not a git checkout"
    return f"{Path(where).parent} ({rev})"


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    return out.splitlines()[0].split("Copyright")[0].strip() if out else "wrk"


# -- main -----------------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number from 0 to 64 expected")
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs and small counts (a smoke run, not the figures)")
    parser.add_argument("--only", action="append", choices=FIGURES, metavar="NAME",
                        help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--no-wrk", action="store_true",
                        help="drive the load with scripts/loadgen.py even when wrk is installed")
    parser.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="where to create the temporary directory (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server logs, data dirs)")
    parser.add_argument("--busy", type=_count, default=0, metavar="N",
                        help="keep N processes spinning on the CPUs during the whole run "
                             "(context: a busy machine; default 0)")
    parser.add_argument("--postgres", metavar="DSN",
                        help="the postgres figure's database: postgresql://... of an existing "
                             "server (a scratch database: the bench appends to its log); "
                             "default: a private cluster started for the run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.make(args.quick)
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    names = [n for n in FIGURES if not args.only or n in args.only]
    # Ctrl-C and SIGTERM end the run through the clean-up below, even when the bench was
    # started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    info = machine()
    loader = wrk_version() + " -t1" if use_wrk else "scripts/loadgen.py (own load generator)"
    say(f"collector bench{' (--quick: smaller runs, not the issue figures)' if plan.quick else ''}")
    say(f"  machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, aiohttp "
        f"{info['aiohttp']}, load average {info['load_average'][0]:.2f}")
    say(f"  load generator: {loader}")
    if args.busy:
        say(f"  busy machine: {args.busy} process(es) spinning on the CPUs for the whole run "
            "(--busy; context, not the issue's figures)")
    try:
        source = collector_source()
    except BenchError as exc:
        say(f"ERROR: {exc}")
        return 1
    say(f"  collector: {source}")
    say(f"  messages: real UpdateState lines of {CAPTURE.relative_to(REPO)}")
    started = time.monotonic()
    try:
        with Harness(plan, use_wrk=use_wrk, work_dir=args.work_dir, keep=args.keep,
                     busy=args.busy, postgres_dsn=args.postgres) as h:
            say(f"  {h.event_count} UpdateState messages; temporary directory {h.tmp}")
            if not h.fast_reference:
                say("  uvloop or orjson missing: no uvloop+orjson reference rows")
            for name in names:
                try:
                    FIGURE_FUNCS[name](h)
                except (BenchError, OSError, http.client.HTTPException,
                        subprocess.SubprocessError, ValueError, KeyError) as exc:
                    h.stop_all()
                    message = f"{type(exc).__name__}: {exc}"
                    h.report.errors[name] = message
                    h.report.add(Row(FIGURE_ROWS[name], "", None, error=message))
                    say(f"  ERROR, {name} not measured: {message}")
            report = h.report
    except KeyboardInterrupt:
        say("\ninterrupted: servers stopped, temporary directory removed")
        return 130
    elapsed = time.monotonic() - started
    load_end = os.getloadavg()[0]
    busy = f"; {args.busy} busy process(es)" if args.busy else ""
    say(f"\n== results ({elapsed:.0f} s; {info['cpus']}-CPU machine, load average "
        f"{info['load_average'][0]:.2f} at the start, {load_end:.2f} at the end; load generator: "
        f"{loader}{busy})")
    say(table(report.rows))
    verdict, complete = report.verdict()
    say("\n" + verdict)
    if report.problems:
        say("\nproblems seen (daemon logs, counts):")
        for line in report.problems:
            say(f"  - {line}")
    for name, message in report.errors.items():
        say(f"\nERROR: {name} was not measured: {message}")
    if args.json:
        args.json.write_text(json.dumps({
            "quick": plan.quick, "plan": dataclasses.asdict(plan), "load_generator": loader,
            "busy_processes": args.busy,
            "collector": source,
            "machine": info | {"load_average_end": os.getloadavg()},
            "rows": [r.as_json() for r in report.rows], "details": report.details,
            "problems": report.problems, "errors": report.errors, "seconds": elapsed,
        }, indent=2, default=str) + "\n")
        say(f"\nresults written to {args.json}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
