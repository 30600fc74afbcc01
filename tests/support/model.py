"""Handlers and helpers for the fault tests: a handler the test steers job by job, a
look inside a queue file left by a killed server, and a tiny HTTP client.

`gated` is loaded by a real server with `--handler tests.support.model:gated`. Each call
appends `start CALL SEQ ATTEMPT ID` to the file named by $MODEL_RECORD_FILE (one
O_APPEND write, fsynced), then waits until the file named by $MODEL_CONTROL_FILE holds a
line `CALL VERDICT`, appends `end CALL SEQ VERDICT` (fsynced) and acts on the verdict:
`ok` returns, `fail` raises (retry later), `perm` raises PermanentError (dead letter).
CALL is `PID.N`, unique across restarts. So the test decides the fate of every handler
call, and the record file says exactly what each process saw and decided.

`record` only appends `done CALL SEQ ATTEMPT ID` and returns; `held` does the same once
the file $MODEL_GATE_FILE exists (the test opens the gate by creating it). `remember`
keeps the jobs it sees in memory, for tests that run the app in-process.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from collector import Job, PermanentError
from collector.queue import QUEUE_FILE, inspect_file, read_pending
from tests.support.paths import REPO

RECORD_ENV: Final = "MODEL_RECORD_FILE"
CONTROL_ENV: Final = "MODEL_CONTROL_FILE"
GATE_ENV: Final = "MODEL_GATE_FILE"
VERDICTS: Final = ("ok", "fail", "perm")
_POLL_S: Final = 0.002

_calls = itertools.count(1)
_verdicts: dict[str, str] = {}
_control_offset = 0


def append_line(path: Path | str, line: str) -> None:
    """Append one line with a single O_APPEND write and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def event_id(job: Job) -> str:
    """The `id` field of the job's payload ("-" when it has none)."""
    payload = job.payload
    value = payload.get("id") if isinstance(payload, dict) else None
    return "-" if value is None else "_".join(str(value).split())


def _read_verdicts(path: str) -> None:
    """Add the complete lines written to the control file since the last look."""
    global _control_offset
    try:
        with open(path, "rb") as fh:
            fh.seek(_control_offset)
            data = fh.read()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1
    _control_offset += end
    for line in data[:end].decode().splitlines():
        call, _, verdict = line.partition(" ")
        _verdicts[call] = verdict


async def gated(job: Job) -> None:
    """Record the call, wait for the test's verdict on it, record and obey it."""
    call = f"{os.getpid()}.{next(_calls)}"
    record = os.environ[RECORD_ENV]
    control = os.environ[CONTROL_ENV]
    append_line(record, f"start {call} {job.seq} {job.attempt} {event_id(job)}")
    while call not in _verdicts:
        _read_verdicts(control)
        if call not in _verdicts:
            await asyncio.sleep(_POLL_S)
    verdict = _verdicts.pop(call)
    append_line(record, f"end {call} {job.seq} {verdict}")
    if verdict == "fail":
        raise RuntimeError(f"told to fail (call {call})")
    if verdict == "perm":
        raise PermanentError(f"told to give up (call {call})")


async def record(job: Job) -> None:
    """Append `done CALL SEQ ATTEMPT ID` to $MODEL_RECORD_FILE (fsynced) and return."""
    call = f"{os.getpid()}.{next(_calls)}"
    append_line(os.environ[RECORD_ENV], f"done {call} {job.seq} {job.attempt} {event_id(job)}")


async def held(job: Job) -> None:
    """Wait until the file $MODEL_GATE_FILE exists, then do what `record` does."""
    gate = Path(os.environ[GATE_ENV])
    while not gate.exists():
        await asyncio.sleep(0.01)
    await record(job)


#: Jobs seen by `remember`, in the order the worker handed them over.
SEEN: list[Job] = []


async def remember(job: Job) -> None:
    """Keep the job in SEEN and acknowledge it."""
    SEEN.append(job)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the record file."""

    kind: str  # start | end | done
    call: str
    seq: int
    rest: tuple[str, ...]  # start, done: (attempt, id); end: (verdict,)


class RecordReader:
    """Reads the record file incrementally, waiting (bounded) for the next line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._pending: list[Line] = []
        self.lines: list[Line] = []

    def _poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line cut by a kill has no newline yet
        self._offset += end
        for text in data[:end].decode().splitlines():
            kind, call, seq, *rest = text.split()
            line = Line(kind, call, int(seq), tuple(rest))
            self._pending.append(line)
            self.lines.append(line)

    def next(self, what: str, timeout: float = 20.0) -> Line:
        """The next unread line; an AssertionError if none comes within `timeout` s."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"no record line within {timeout} s: waiting for {what}")
            time.sleep(_POLL_S)
            self._poll()
        return self._pending.pop(0)

    def unread(self) -> list[Line]:
        """Lines written so far and not yet returned by next() (they stay unread)."""
        self._poll()
        return list(self._pending)

    def drop_unread(self) -> list[Line]:
        """Forget the unread lines (after a kill) and return them."""
        self._poll()
        dropped, self._pending = self._pending, []
        return dropped


@dataclass(frozen=True, slots=True)
class QueueFileState:
    """What a queue file holds, read from a copy (the original is left as it is)."""

    rows: dict[int, int]  # seq -> failed attempts recorded, for every job not yet done
    dead: frozenset[int]
    processed_total: int
    last_seq: int
    clean_shutdown: bool
    payload_ids: dict[int, str] = field(default_factory=dict)


def read_queue_file(data_dir: Path) -> QueueFileState:
    """Read the queue file of a stopped server as the next start would see it.

    The file and its WAL are copied first: opening the original would checkpoint the
    WAL on close, and the next start must find exactly what the stop left. The jobs come
    from queue.read_pending (whatever the row layout), the numbers from inspect_file.
    """
    with tempfile.TemporaryDirectory(prefix="queue-copy-") as tmp:
        copy = Path(tmp)
        for suffix in ("", "-wal"):
            src = data_dir / f"{QUEUE_FILE}{suffix}"
            if src.exists():
                shutil.copyfile(src, copy / f"{QUEUE_FILE}{suffix}")
        report = inspect_file(copy)
        assert not report.problems, report.problems
        jobs = read_pending(copy)
        conn = sqlite3.connect(copy / QUEUE_FILE)
        try:
            dead = frozenset(s for (s,) in conn.execute("SELECT seq FROM dead_letters"))
        finally:
            conn.close()
    return QueueFileState(
        rows={job.seq: job.attempt - 1 for job in jobs}, dead=dead,
        processed_total=report.processed_total, last_seq=report.last_seq,
        clean_shutdown=report.clean_shutdown,
        payload_ids={job.seq: event_id(job) for job in jobs})


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, headers (lower-case names) and the JSON body if any."""

    status: int
    headers: dict[str, str]
    body: Any


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 20.0) -> Answer:
    """One HTTP request on a fresh connection to 127.0.0.1:`port`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        answer_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Answer(resp.status, answer_headers, parsed)


def post_events(port: int, events: Any, headers: dict[str, str] | None = None,
                timeout: float = 20.0) -> Answer:
    """POST a JSON body to /v1/events."""
    return request(port, "POST", "/v1/events", json.dumps(events).encode(),
                   {"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `predicate` until it holds; an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.01)




def cli_env(**extra: str) -> dict[str, str]:
    """The environment without collector settings, with the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COLLECTOR_") and k not in {"STATE_DIRECTORY", "COLLECTOR_CONFIG"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60.0, prefix: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m collector ARGS` to completion (`prefix`: e.g. a setpriv command).

    A command still running after `timeout` seconds fails the test with what it printed
    and, from faulthandler on SIGABRT, where each of its threads was: a hang says where.
    """
    argv = [*prefix, sys.executable, "-m", "collector", *args]
    env = {**(env or cli_env()), "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                stdout, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            raise AssertionError(
                f"`collector {' '.join(args)}` still ran after {timeout:g} s; stdout:\n{stdout}"
                f"\nstderr, with its threads' stacks at SIGABRT:\n{stderr}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def one_line(stderr: str) -> str:
    """The single line of `stderr`; fails on tracebacks and multi-line output."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].strip()
    return lines[0]
