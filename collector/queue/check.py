"""Is a queue file sound? Read-only looks at it, for the daemon's start and for
`collector check` / `status`; nothing here writes to the file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from collector.errors import (
    QueueCorruptError,
)
from collector.jobs import Job
from collector.queue.rows import (
    DEAD_COLUMNS,
    JOB_COLUMNS,
    JOBS_TABLE,
    QUEUE_FILE,
    dead_job,
    decode_page,
    decode_row,
    group_sizes,
)

SQLITE_DAMAGED: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def refuse_damaged(path: Path) -> bool:
    """Raise QueueCorruptError if a file left by an unclean stop fails its check; return
    True when the last run did not stop cleanly (and the file passed its check).

    Runs on a read-only connection BEFORE persist-queue opens the file, so a refused
    start changes nothing in it (no table created, no WAL checkpointed on close).
    """
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False  # the regular open reports it
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) in SQLITE_DAMAGED:
                raise QueueCorruptError(path, [str(exc)]) from None
            return False  # no meta table yet: a new or foreign file, the regular open decides
        if row is None or row[0]:
            return False
        # The last run did not close the file (crash, kill -9, power loss): check it
        # before trusting it. A clean run skips this, so start-up stays fast.
        problems = integrity_problems(conn)
        if problems:
            raise QueueCorruptError(path, problems)
        return True
    finally:
        conn.close()


def integrity_problems(conn: sqlite3.Connection, *, full: bool = False) -> list[str]:
    """What is wrong with the open database; [] when it is sound.

    Quick: SQLite's quick_check (the b-trees hold together). Full: integrity_check, and
    every job row and dead letter must decode the way the worker will decode it (a row
    SQLite finds sound but whose data is not our JSON would stop the worker later).
    """
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = conn.execute(f"PRAGMA {pragma}(20)").fetchall()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    found = [str(r[0]) for r in rows]
    if found != ["ok"]:
        return found
    return _content_problems(conn) if full else []


def _content_problems(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Job rows and dead letters that the worker could not decode (at most `limit`)."""
    problems: list[str] = []
    try:
        for row in conn.execute(f"SELECT {JOB_COLUMNS} FROM {JOBS_TABLE} ORDER BY _id"):
            if bad_job_row(row):
                problems.append(f"job row {row[0]}: {bad_job_row(row)}")
                if len(problems) >= limit:
                    return problems
        for row in conn.execute(f"SELECT {DEAD_COLUMNS} FROM dead_letters ORDER BY seq"):
            if bad_dead_row(row):
                problems.append(f"dead letter {row[0]}: {bad_dead_row(row)}")
                if len(problems) >= limit:
                    return problems
    except sqlite3.Error as exc:
        problems.append(str(exc))
    return problems


def bad_job_row(row: tuple[Any, ...]) -> str:
    """Why a job row cannot be used as it is ("" when it can)."""
    try:
        last, first, data, ts, done_upto, attempts, revived = row
        if not (isinstance(last, int) and isinstance(first, int) and first <= last):
            return "bad seq range"
        if not (isinstance(done_upto, int) and first - 1 <= done_upto <= last):
            return "done_upto out of range"
        if not (isinstance(attempts, int) and attempts >= 0 and revived in (0, 1)
                and isinstance(ts, int | float) and isinstance(data, bytes)):
            return "bad column types"
        if sum(group_sizes(data)) != last - first + 1:
            return "event count does not match the seq range"
        decode_row(row)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        return f"undecodable ({exc})"
    return ""


def bad_dead_row(row: tuple[Any, ...]) -> str:
    """Why a dead-letter row cannot be used as it is ("" when it can)."""
    try:
        if not (isinstance(row[0], int) and isinstance(row[1], bytes)
                and isinstance(row[6], str)):
            return "bad column types"
        dead_job(row)
    except (ValueError, TypeError, IndexError) as exc:
        return f"undecodable ({exc})"
    return ""


@dataclass(frozen=True, slots=True)
class FileReport:
    """What `collector check`/`status` read from a queue file without a daemon."""

    path: Path
    exists: bool
    problems: list[str]
    pending: int = 0
    dead: int = 0
    last_seq: int = 0
    processed_total: int = 0
    oldest_pending_at: float | None = None
    clean_shutdown: bool = True


def inspect_file(data_dir: Path, *, full: bool = False) -> FileReport:
    """Read-only look at the queue file of a stopped (or running) daemon.

    The file is opened read-only: SQLite reads a WAL left by a crash without merging it
    into the file, so checking changes nothing, not even a damaged file. A -shm SQLite
    may have to create for that is given the owner of the queue file, so that running
    this as root does not lock the daemon's own user out of it.
    """
    path = data_dir / QUEUE_FILE
    if not path.exists():
        return FileReport(path=path, exists=False, problems=[])
    before = {s: Path(f"{path}{s}").exists() for s in ("-wal", "-shm")}
    try:
        conn = connect_read_only(path)
    except sqlite3.Error as exc:
        return FileReport(path=path, exists=True, problems=[str(exc)])
    try:
        problems = integrity_problems(conn, full=full)
        if problems:
            return FileReport(path=path, exists=True, problems=problems)
        try:
            table = JOBS_TABLE
            seq_row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
            ).fetchone()
            pending, oldest, max_id = conn.execute(
                f"SELECT coalesce(sum(_id - done_upto), 0), min(timestamp), "
                f"coalesce(max(_id), 0) FROM {table}"
            ).fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            return FileReport(path=path, exists=True, problems=[str(exc)])
        return FileReport(
            path=path, exists=True, problems=[], pending=pending, dead=dead,
            last_seq=max(seq_row[0] if seq_row else 0, max_id),
            processed_total=int(meta.get("processed_total", 0)), oldest_pending_at=oldest,
            clean_shutdown=bool(meta.get("clean_shutdown", 1)),
        )
    finally:
        conn.close()
        give_back(path, [s for s, existed in before.items() if not existed])


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: no checkpoint on close, no write of any kind.

    Without a WAL (the daemon stopped cleanly) the file is opened as immutable, so SQLite
    creates no -wal/-shm beside it either. With a WAL (a crash, or a running daemon)
    it must be read through the WAL index, which SQLite may have to create.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None)


def give_back(path: Path, suffixes: list[str]) -> None:
    """Give files SQLite created next to `path` (-wal, -shm) the owner of `path`."""
    with contextlib.suppress(OSError):
        owner = path.stat()
        for suffix in suffixes:
            created = Path(f"{path}{suffix}")
            if created.exists() and created.stat().st_uid != owner.st_uid:
                os.chown(created, owner.st_uid, owner.st_gid)


def read_pending(data_dir: Path) -> list[Job]:
    """Every job not yet done in a stopped daemon's queue file, in line order.

    For tools and tests that look at the file from outside; the daemon never calls it.
    """
    path = data_dir / QUEUE_FILE
    conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        revived = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM {JOBS_TABLE} WHERE revived = 1 ORDER BY _id"
        ).fetchall()
        regular = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM {JOBS_TABLE} WHERE revived = 0 ORDER BY _id"
        ).fetchall()
    finally:
        conn.close()
    return decode_page(revived).jobs + decode_page(regular).jobs
