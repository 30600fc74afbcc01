"""Test handlers that log every job they see to a file, and helpers to read that log back.

A server subprocess loads them with `--handler tests.support.recorder:record` (the repo root is on
its PYTHONPATH). The file is named by the environment variable RECORDER_FILE; every line
is written with one O_APPEND write and fsynced before the handler returns, so a line in
the file means the handler really ran (a kill -9 cannot lose it). Line format:

    KIND PID SEQ ATTEMPT EVENT_ID

KIND is `done` (record), or `start`/`end` (slow, around its sleep).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from collector.jobs import Job

FILE_ENV = "RECORDER_FILE"
DELAY_ENV = "RECORDER_DELAY"


@dataclass(frozen=True, slots=True)
class Record:
    """One line of the record file."""

    kind: str
    pid: int
    seq: int
    attempt: int
    event_id: str


def _event_id(job: Job) -> str:
    payload = job.payload
    value = payload.get("id") if isinstance(payload, dict) else None
    return "-" if value is None else "_".join(str(value).split())


def _append(kind: str, job: Job) -> None:
    line = f"{kind} {os.getpid()} {job.seq} {job.attempt} {_event_id(job)}\n".encode()
    fd = os.open(os.environ[FILE_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


async def record(job: Job) -> None:
    """Append `done PID SEQ ATTEMPT ID` to $RECORDER_FILE (fsynced), then return."""
    _append("done", job)
    delay = float(os.environ.get(DELAY_ENV, "0"))
    if delay:
        await asyncio.sleep(delay)


async def slow(job: Job) -> None:
    """Record `start`, sleep $RECORDER_DELAY seconds (default 1), record `end`."""
    _append("start", job)
    await asyncio.sleep(float(os.environ.get(DELAY_ENV, "1")))
    _append("end", job)


def read_records(path: Path) -> list[Record]:
    """Every complete line of the record file, in file order ([] when there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line cut by a kill: its handler never returned
        kind, pid, seq, attempt, event_id = line.split()
        records.append(Record(kind, int(pid), int(seq), int(attempt), event_id))
    return records


def seqs(records: Iterable[Record], kind: str = "done") -> list[int]:
    """The seqs of the records of one kind, in file order."""
    return [r.seq for r in records if r.kind == kind]
