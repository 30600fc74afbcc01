"""Helpers for the failure-branch tests (tests/test_failures.py, tests/test_bridge_failures.py).

Every fault here is real: a size-limited tmpfs filled to its last byte (ENOSPC, which
SQLite reports as SQLITE_FULL), a file size limit set on a running server process
(RLIMIT_FSIZE: the kernel refuses writes past it with EFBIG, which SQLite reports as
SQLITE_IOERR, "disk I/O error"), a real second process, real garbage bytes.

Why RLIMIT_FSIZE and not a file system remounted read-only under the server: Linux refuses
`mount -o remount,ro` (EBUSY) while any file on it is open for writing, and a running
daemon keeps queue.db, its WAL and its shm open read-write, so EROFS cannot be made to
happen under it and then go away again. The file size limit is the one storage error
other than "disk full" that the kernel produces on demand for one process and takes
back without a restart.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.diskfull import fill
from tests.support.model import CONTROL_ENV, RECORD_ENV, Line, RecordReader, append_line
from tests.support.server import ServerProcess

__all__ = ["Verdicts", "file_size_limit", "fill", "log_events", "need", "small_tmpfs"]


def need(ok: bool, reason: str) -> None:
    """Skip when `ok` is false, except in CI (CI=true), where the test must run: fail."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size_mb: int = 16) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB on `mnt` (created), unmounted on the way out."""
    need(os.geteuid() == 0, f"mounting a tmpfs needs root (euid {os.geteuid()})")
    mnt.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt))
    need(mounted.returncode == 0,
         f"cannot mount a tmpfs on {mnt}: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))


@contextlib.contextmanager
def file_size_limit(pid: int, limit: int) -> Iterator[None]:
    """Limit the files process `pid` may write to `limit` bytes (RLIMIT_FSIZE, soft).

    A write at or past the limit fails with EFBIG (Python ignores SIGXFSZ, so the process
    lives on). The old limit is put back on the way out, if the process still runs.
    """
    old = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, old)


def log_events(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    """The server's JSON log lines whose event is `name`, in order."""
    found = []
    for line in server.output().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
    return found


class Verdicts:
    """Drives a server whose handler is tests.support.model:gated: each handler call is
    seen (`expect`) and decided (`decide`) by the test."""

    def __init__(self, record: Path, control: Path) -> None:
        self.record = record
        self.control = control
        self.reader = RecordReader(record)
        self.starts: list[tuple[int, int]] = []  # (seq, attempt) of every call, in order
        #: `done` lines of tests.support.model:record, when it runs before gated.
        self.done: list[Line] = []

    def env(self) -> dict[str, str]:
        """The environment the server needs for the gated handler."""
        return {RECORD_ENV: str(self.record), CONTROL_ENV: str(self.control)}

    def expect(self, seq: int, attempt: int, what: str, timeout: float = 30.0) -> Line:
        """The next handler call must be job `seq`, attempt `attempt`."""
        line = self._next(what, timeout)
        assert line.kind == "start", line
        got = (line.seq, int(line.rest[0]))
        self.starts.append(got)
        assert got == (seq, attempt), f"{what}: expected call (seq, attempt) " \
                                      f"{(seq, attempt)}, got {got}; calls so far {self.starts}"
        return line

    def decide(self, line: Line, verdict: str) -> None:
        """Tell the handler call `line` what to do, and wait until it has."""
        append_line(self.control, f"{line.call} {verdict}")
        end = self._next(f"the end of call {line.call}", 30.0)
        assert (end.kind, end.call, end.rest) == ("end", line.call, (verdict,)), end

    def _next(self, what: str, timeout: float) -> Line:
        """The next line of the gated handler; `done` lines are put aside in `done`."""
        while True:
            line = self.reader.next(what, timeout=timeout)
            if line.kind != "done":
                return line
            self.done.append(line)

    def no_call_yet(self) -> None:
        """No handler call started since the last one seen."""
        assert self.reader.unread() == [], self.reader.unread()
