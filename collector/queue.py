"""The durable FIFO: the only module that touches persist-queue and the queue's SQLite file.

Design (see README "How it works"):

* Storage is persist-queue's ``SQLiteBase`` with our own SQL. A row holds a contiguous
  run of jobs (seqs ``first_seq`` .. ``_id``), written by one group commit, as a JSON
  array of request groups ``[received_at, source, first sequence, [event, ...]]`` in
  which each request's events are the bytes it sent (never serialised again): the per-row
  cost of SQLite (B-tree insert, record header, page bookkeeping) is paid once per
  commit, not once per event, and so is the GIL hand-off per statement. The key
  ``_id`` is the row's LAST seq, so SQLite's AUTOINCREMENT high-water mark is the
  highest seq ever handed out and seqs are never reused.
* Rows are deleted as soon as every job in them is done (acknowledged or dead), so
  taking the next job is one index seek whether 0 or 10**6 jobs were processed before.
  A partly done row records how far it got (``done_upto``).
* Every SQLite call runs in one executor thread owned by this module.
* Concurrent ``put`` calls are group-committed: requests wait in an outbox, and a writer
  running in the executor thread commits everything in it as one transaction, then
  what came in meanwhile as the next, until it is empty (all or none, so each request
  is all or none too). The thread hands out the seqs, in commit order. A request is
  answered only after its COMMIT returned; with ``durability = "full"`` that COMMIT is
  fsynced (``synchronous=FULL``). A transaction of fresh events is one multi-row INSERT
  in autocommit mode: every statement costs the thread a wait for the GIL.
* Acknowledgements are batched: every ``ack_interval_ms`` they go through the outbox
  into the next transaction (and are written before an attempt or a dead letter is
  recorded, and at close), without an fsync of their own. A
  lost acknowledgement only replays a job (at least once).
* Jobs just committed are handed to the worker from memory, so it does not read back
  what was just written; only a backlog beyond the in-memory window is read from disk,
  in pages, in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import os
import shutil
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import structlog
from persistqueue.sqlbase import SQLiteBase

from collector.errors import (
    QueueClosedError,
    QueueCorruptError,
    QueueFullError,
    StorageError,
    StorageFullError,
)
from collector.jobs import Job
from collector.serialization import OrjsonSerializer

log = structlog.get_logger(__name__)

QUEUE_FILE: Final = "queue.db"
_MEMORY_WINDOW: Final = 4096  # jobs handed to the worker from memory at most
_PAGE_ROWS: Final = 64  # rows read from disk per executor call at most
_PAGE_EVENTS: Final = 2048  # ... and jobs, roughly (whole rows are read)
_ROW_MAX_EVENTS: Final = 1024  # jobs per row at most
_INSERT_ROWS: Final = 64  # rows per INSERT statement at most (5 parameters each)
_DELETE_KEYS: Final = 128  # row keys per DELETE statement (padded to it)
_ROW_MAX_BYTES: Final = 1 << 20  # payload bytes per row at most (one event may exceed it)
_SQLITE_FULL: Final = 13
_SQLITE_DAMAGED: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_JOBS_TABLE: Final = "jobs_v1"  # persist-queue names it {_TABLE_NAME}_{name}
_WAL_LIMIT_BYTES: Final = 16 * 1024 * 1024
# Storage tuning, measured with 18 KB and 1.7 MB commits (WAL, synchronous=FULL): 16 KiB
# pages need a quarter of the page and WAL-frame bookkeeping of 4 KiB pages for a large
# row (2.8x the MB/s together with the two settings below) and cost small rows nothing.
# The page size applies to new files only; an older file keeps its own.
_PAGE_SIZE: Final = 16384
_CHECKPOINT_PAGES: Final = _WAL_LIMIT_BYTES // _PAGE_SIZE  # checkpoint when the WAL is this long
_GROUPS_PER_RUN: Final = 16  # group commits per writer run before other executor work
_ACKS_FORCE_FLUSH: Final = 10_000  # acknowledgements that trigger a commit of their own
_RETRY_AFTER_FAILURE_S: Final = 1.0  # acknowledgements wait this long after a failed commit
_SEQ_MARGIN_WHEN_UNKNOWN: Final = 1_000_000_000
_JOB_COLUMNS: Final = "_id, first_seq, data, timestamp, done_upto, attempts, revived"


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a committed request gets back; replayed for a repeated Idempotency-Key."""

    accepted: int
    first_seq: int
    last_seq: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A job in the dead-letter store."""

    seq: int
    payload: Any
    received_at: float
    source: str | None
    sequence: int | None
    attempts: int
    error: str
    failed_at: float


@dataclass(slots=True)
class _Put:
    """One request's events on their way to disk."""

    array: bytes  # the events as a JSON array text, as received
    count: int
    payloads: Sequence[Any]
    received_at: float
    source: str | None
    sequence: int | None
    key: str | None
    future: asyncio.Future[Accepted] = field(repr=False)
    revive: int | None = None  # the dead letter this put brings back at the tail


@dataclass(frozen=True, slots=True)
class _Acks:
    """Acknowledgements to commit: rows now wholly done, and how far the head row got."""

    rows: tuple[int, ...] = ()  # row keys (last seqs) to delete
    partial: tuple[int, int] | None = None  # (row key, done_upto) of a partly done row
    count: int = 0  # acknowledged jobs (for processed_total)

    def __bool__(self) -> bool:
        return bool(self.count or self.rows or self.partial)

    @staticmethod
    def merge(batches: Sequence[_Acks]) -> _Acks:
        """Several batches, oldest first, as one (a row's progress only ever grows)."""
        if len(batches) == 1:
            return batches[0]
        partials = [b.partial for b in batches if b.partial is not None]
        return _Acks(rows=tuple(r for b in batches for r in b.rows),
                     partial=partials[-1] if partials else None,
                     count=sum(b.count for b in batches))


@dataclass(frozen=True, slots=True)
class _Span:
    """A stored row as the loop sees it: seqs first..last (the key is `last`)."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class _Page:
    """Jobs read from disk with the rows they came from."""

    jobs: list[Job]
    spans: list[_Span]
    set_aside: list[tuple[int, int]] = field(default_factory=list)  # (dead seq, jobs lost)


@dataclass(frozen=True, slots=True)
class _State:
    """What open() reads from the file."""

    last_seq: int
    head_done: int | None  # done_upto of the first regular row, None when there is none
    head_first: int | None
    pending: int
    dead: int
    processed: int
    revived: _Page


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters for /v1/queue."""

    pending: int
    in_flight: int
    dead: int
    processed_total: int
    last_seq: int
    oldest_pending_age_s: float | None


def _encode_group(received_at: float, source: str | None, sequence: int | None,
                  array: bytes) -> bytes:
    """One request's events in a row: [received_at, source, first sequence, [events]]."""
    seq = b"null" if sequence is None else str(sequence).encode()
    return (b"[" + repr(received_at).encode() + b"," + orjson.dumps(source) + b"," + seq
            + b"," + array + b"]")


def _group_sizes(data: bytes) -> list[int]:
    """How many events each request group of a row holds (for checks)."""
    return [len(group[3]) for group in orjson.loads(data)]


def _decode_row(row: tuple[Any, ...]) -> tuple[list[Job], _Span]:
    """The jobs of one row (key, first_seq, data, timestamp, done_upto, attempts, revived)
    still to do, and its span."""
    last, first, data, _ts, done_upto, attempts, _revived = row
    jobs = []
    seq = first
    for received_at, source, sequence, events in orjson.loads(data):
        for index, payload in enumerate(events):
            if seq > done_upto:
                jobs.append(Job(seq, payload, received_at,
                                attempts + 1 if seq == done_upto + 1 else 1, source,
                                None if sequence is None else sequence + index))
            seq += 1
    if seq != last + 1:
        raise ValueError(f"row {last} holds {seq - first} events for seqs {first}..{last}")
    return jobs, _Span(first, last)


class _JobTable(SQLiteBase):
    """persist-queue's SQLite base with job rows, dead letters and idempotency keys."""

    _TABLE_NAME = "jobs"
    _KEY_COLUMN = "_id"
    _SQL_CREATE = (
        "CREATE TABLE IF NOT EXISTS {table_name} ("
        "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, first_seq INTEGER NOT NULL, "
        "data BLOB NOT NULL, timestamp FLOAT NOT NULL, done_upto INTEGER NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, revived INTEGER NOT NULL DEFAULT 0)"
    )
    _SQL_INSERT = (
        "INSERT INTO {table_name} ({key_column}, first_seq, data, timestamp, done_upto) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    _SQL_SELECT = (
        "SELECT " + _JOB_COLUMNS + " FROM {table_name} "
        "WHERE {key_column} > ? AND revived = 0 ORDER BY {key_column} LIMIT ?"
    )

    @property
    def _sql_fetch(self) -> str:
        return self._SQL_SELECT.format(table_name=self._table_name, key_column=self._key_column)

    def __init__(
        self, path: Path, *, durability: Literal["full", "normal"], max_bytes: int = 0
    ) -> None:
        self._durability = durability
        self._max_bytes = max_bytes
        self._insert_sql: dict[int, str] = {}  # multi-row INSERT statements by row count
        self.next_seq = 1  # the seq the next committed event gets (set by state())
        _refuse_damaged(path / QUEUE_FILE)
        super().__init__(
            str(path), name="v1", serializer=OrjsonSerializer, db_file_name=QUEUE_FILE,
            timeout=30.0,
        )
        # persist-queue sets _table_name; every other statement here names it that way.
        self._delete_sql = (f"DELETE FROM {self._table_name} WHERE _id IN "
                            f"({', '.join(['?'] * _DELETE_KEYS)})")

    def _new_db_connection(self, path: str, multithreading: bool, timeout: float
                           ) -> sqlite3.Connection:
        # persist-queue's own connect, plus the page size, which must be set before the
        # file's first table and before WAL mode (it is ignored for an existing file).
        conn = sqlite3.connect(f"{path}/{self.db_file_name}", timeout=timeout,
                               check_same_thread=not multithreading)
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _init(self) -> None:
        super()._init()
        try:
            self._prepare()
        except BaseException:
            # Close here, in the connection's own thread; persist-queue's __del__ would
            # try from whichever thread collects the object.
            self.close_connection()
            raise

    def close_connection(self) -> None:
        """Close the connection without touching the file's contents (idempotent)."""
        for name in ("_getter", "_putter"):
            conn = getattr(self, name, None)
            if conn is not None:
                conn.close()
            setattr(self, name, None)

    def _prepare(self) -> None:
        conn: sqlite3.Connection = self._conn
        conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS dead_letters (
                seq INTEGER PRIMARY KEY, data BLOB NOT NULL, timestamp FLOAT NOT NULL,
                source TEXT, sequence INTEGER, attempts INTEGER NOT NULL,
                error TEXT NOT NULL, failed_at FLOAT NOT NULL);
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                key TEXT PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                accepted INTEGER NOT NULL, created_at FLOAT NOT NULL);
            CREATE INDEX IF NOT EXISTS idempotency_keys_created
                ON idempotency_keys (created_at);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta (key, value) VALUES ('processed_total', 0);
            INSERT OR IGNORE INTO meta (key, value) VALUES ('clean_shutdown', 1);
            """
        )
        if self._max_bytes:
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA max_page_count={max(1, self._max_bytes // page_size)}")
        conn.execute("PRAGMA synchronous=" + self._durability.upper())
        # After each checkpoint the WAL is cut back to this size instead of keeping its peak.
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        # Debian builds SQLite with secure_delete on: every deleted row's pages are
        # zeroed, which doubles the disk writes of a queue that deletes all it stores.
        # FAST zeroes only where that costs no extra I/O.
        conn.execute("PRAGMA secure_delete=FAST")
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        (sync,) = conn.execute("PRAGMA synchronous").fetchone()
        expected = 2 if self._durability == "full" else 1
        if mode.lower() != "wal" or sync != expected:
            raise StorageError(
                f"{self.file}: journal_mode={mode} synchronous={sync}, "
                f"cannot guarantee durability={self._durability}"
            )

    @property
    def file(self) -> Path:
        """The SQLite file."""
        return Path(self.path) / QUEUE_FILE

    # -- everything below runs in the queue's executor thread ---------------------------

    def state(self) -> _State:
        """Where the line stands, read once at open."""
        conn: sqlite3.Connection = self._conn
        # persist-queue's _table_name is quoted (`jobs_v1`); sqlite_sequence holds the bare name.
        row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (_JOBS_TABLE,)
        ).fetchone()
        head = conn.execute(
            f"SELECT first_seq, done_upto FROM {self._table_name} WHERE revived = 0 "
            "ORDER BY _id LIMIT 1"
        ).fetchone()
        revived = self._decode_rows(conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM {self._table_name} WHERE revived = 1 ORDER BY _id"
        ))
        (max_id, pending) = conn.execute(
            f"SELECT coalesce(max(_id), 0), coalesce(sum(_id - done_upto), 0) "
            f"FROM {self._table_name}"
        ).fetchone()
        (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        (processed,) = conn.execute(
            "SELECT value FROM meta WHERE key = 'processed_total'"
        ).fetchone()
        last_seq = max(row[0] if row else 0, max_id)
        self.next_seq = last_seq + 1
        return _State(
            last_seq=last_seq,
            head_first=head[0] if head else None,
            head_done=head[1] if head else None,
            pending=pending, dead=dead, processed=processed,
            revived=revived,
        )

    def mark_open(self) -> None:
        """Record that the file is in use: a start that finds this flag set checks the file.

        Done only after state() read the file without error, so a start refused for
        damage writes nothing to it.
        """
        self._conn.execute("UPDATE meta SET value = 0 WHERE key = 'clean_shutdown'")

    @staticmethod
    def _page(rows: list[tuple[Any, ...]]) -> _Page:
        jobs: list[Job] = []
        spans: list[_Span] = []
        for row in rows:
            row_jobs, span = _decode_row(row)
            jobs += row_jobs
            spans.append(span)
        return _Page(jobs, spans)

    def lookup_key(self, key: str, ttl_s: float) -> Accepted | None:
        """The first answer given for an Idempotency-Key still retained, if any."""
        conn: sqlite3.Connection = self._conn
        return self._known_key(conn, key, time.time() - ttl_s)

    @staticmethod
    def _known_key(conn: sqlite3.Connection, key: str, since: float) -> Accepted | None:
        row = conn.execute(
            "SELECT first_seq, last_seq, accepted FROM idempotency_keys "
            "WHERE key = ? AND created_at > ?",
            (key, since),
        ).fetchone()
        if row is None:
            return None
        return Accepted(accepted=row[2], first_seq=row[0], last_seq=row[1], replayed=True)

    def _apply_acks(self, conn: sqlite3.Connection, acks: _Acks) -> None:
        if acks.rows:
            self._delete_rows(conn, acks.rows)
        if acks.partial is not None:
            key, done = acks.partial
            conn.execute(
                f"UPDATE {self._table_name} SET done_upto = ?, attempts = 0 "
                "WHERE _id = ? AND done_upto < ?",
                (done, key, done),
            )
        if acks.count:
            conn.execute(
                "UPDATE meta SET value = value + ? WHERE key = 'processed_total'", (acks.count,)
            )

    def commit(self, puts: list[_Put], acks: _Acks, ttl_s: float
               ) -> tuple[list[Accepted], list[_Span]]:
        """One transaction: acknowledgements, then every request's events, with seqs from
        ``next_seq`` on (this thread hands out seqs: commits run here one after another).

        The transaction is all or none, so each request is too. The events of all the
        requests go into as few rows as the row limits allow; in the common case that is
        one INSERT in autocommit mode, one statement (each statement releases and retakes
        the GIL, which the busy event loop holds most of the time).
        """
        conn: sqlite3.Connection = self._conn
        now = time.time()
        results: list[Accepted] = []
        rows: list[tuple[int, int, bytes, float, int]] = []
        revived: list[tuple[int]] = []
        keys: dict[str, Accepted] = {}
        # Reads first (this thread is the only writer, so they cannot go stale), then
        # all writes in one transaction.
        next_seq = self.next_seq
        row_events: list[bytes] = []
        row_first = next_seq
        row_bytes = row_size = 0
        row_ts = 0.0
        for put in puts:
            known = None
            if put.key is not None:
                known = keys.get(put.key) or self._known_key(conn, put.key, now - ttl_s)
            if known is not None:
                results.append(known)
                continue
            # A request's events stay together; a row ends between requests.
            count = put.count
            if row_events and (row_size + count > _ROW_MAX_EVENTS
                               or row_bytes + len(put.array) > _ROW_MAX_BYTES):
                rows.append(_row(row_first, next_seq - 1, row_events, row_ts))
                row_events, row_first, row_bytes, row_size = [], next_seq, 0, 0
            if not row_events:
                row_ts = put.received_at
            row_events.append(_encode_group(put.received_at, put.source, put.sequence,
                                            put.array))
            row_bytes += len(put.array)
            row_size += count
            next_seq += count
            result = Accepted(accepted=count, first_seq=next_seq - count, last_seq=next_seq - 1)
            if put.key is not None:
                keys[put.key] = dataclasses.replace(result, replayed=True)
            if put.revive is not None:
                revived.append((put.revive,))
            results.append(result)
        if row_events:
            rows.append(_row(row_first, next_seq - 1, row_events, row_ts))
        if not acks and not revived and not keys and len(rows) <= _INSERT_ROWS:
            # The common case: fresh events only. One INSERT in autocommit mode is one
            # transaction and one statement, whether it writes one row or several.
            if rows:
                self._insert(conn, rows)
            self.next_seq = next_seq
            return results, [_Span(r[1], r[0]) for r in rows]
        durable = bool(puts)
        if not durable and self._durability == "full":
            # An acknowledgement need not be fsynced: losing one only replays a job, and
            # the next fsynced commit makes every earlier WAL frame durable anyway.
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with _transaction(conn):
                if acks:
                    self._apply_acks(conn, acks)
                if rows:
                    self._insert(conn, rows)
                if revived:
                    conn.executemany("DELETE FROM dead_letters WHERE seq = ?", revived)
                if keys:
                    conn.executemany(
                        "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
                        [(k, a.first_seq, a.last_seq, a.accepted, now) for k, a in keys.items()],
                    )
        finally:
            if not durable and self._durability == "full":
                conn.execute("PRAGMA synchronous=FULL")
        self.next_seq = next_seq
        return results, [_Span(r[1], r[0]) for r in rows]

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[int, int, bytes, float, int]]
                ) -> None:
        """Insert `rows`, up to _INSERT_ROWS per statement: each statement costs the
        thread a wait for the GIL, which the busy event loop holds most of the time."""
        for start in range(0, len(rows), _INSERT_ROWS):
            chunk = rows[start:start + _INSERT_ROWS]
            sql = self._insert_sql.get(len(chunk))
            if sql is None:
                values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                sql = self._insert_sql[len(chunk)] = (
                    self._sql_insert.partition("VALUES")[0] + "VALUES " + values)
            conn.execute(sql, [value for row in chunk for value in row])

    def _delete_rows(self, conn: sqlite3.Connection, keys: Sequence[int]) -> None:
        """Delete the rows with these keys, _DELETE_KEYS at a time.

        One statement per chunk, not one per row (executemany): each statement costs this
        thread a wait for the GIL, which the busy event loop holds most of the time. A
        chunk is padded to the full length by repeating its last key, so that there is
        only one statement text to prepare and cache.
        """
        sql = self._delete_sql
        for start in range(0, len(keys), _DELETE_KEYS):
            chunk = list(keys[start:start + _DELETE_KEYS])
            chunk += [chunk[-1]] * (_DELETE_KEYS - len(chunk))
            conn.execute(sql, chunk)

    def fetch(self, after: int, limit_rows: int) -> _Page:
        """The regular rows whose last seq is > `after`, in order.

        A row that cannot be decoded (damage that the integrity check cannot see) is
        moved, raw, to the dead letters under its first pending seq, so that the line
        moves on and the bytes are kept for a person to look at.
        """
        conn: sqlite3.Connection = self._conn
        # Rows hold up to _ROW_MAX_EVENTS jobs: stop after about _PAGE_EVENTS of them, so
        # that a page (and the GIL time to decode it) stays small whatever the rows hold.
        return self._decode_rows(conn.execute(self._sql_fetch, (after, limit_rows)),
                                 max_jobs=_PAGE_EVENTS)

    def _decode_rows(self, cursor: sqlite3.Cursor, *, max_jobs: int | None = None) -> _Page:
        """Decode job rows in order; rows that cannot be decoded are set aside (after the
        read cursor is closed, so no write happens under an open statement)."""
        page = _Page([], [])
        damaged: list[tuple[tuple[Any, ...], Exception]] = []
        for row in cursor:
            if max_jobs is not None and len(page.jobs) >= max_jobs:
                break
            try:
                jobs, span = _decode_row(row)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                damaged.append((row, exc))
                continue
            page.jobs.extend(jobs)
            page.spans.append(span)
        cursor.close()
        page.set_aside.extend(self._set_aside(row, exc) for row, exc in damaged)
        return page

    def _set_aside(self, row: tuple[Any, ...], exc: Exception) -> tuple[int, int]:
        last, first, data, ts, done_upto = row[:5]
        seq = done_upto + 1
        error = (f"undecodable queue row (seqs {first}..{last}, {last - done_upto} jobs "
                 f"not done): {exc}")
        log.error("queue_row_damaged", first_seq=first, last_seq=last, error=str(exc),
                  action=f"moved raw to the dead letters as seq {seq}",
                  hint="`collector check --full` lists any other damaged row")
        raw = data.decode("utf-8", "replace") if isinstance(data, bytes) else repr(data)
        conn: sqlite3.Connection = self._conn
        with _transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, NULL, NULL, 0, ?, ?)",
                (seq, orjson.dumps({"undecodable_row": raw, "first_seq": first,
                                    "last_seq": last}), ts, error, time.time()),
            )
            conn.execute(f"DELETE FROM {self._table_name} WHERE _id = ?", (last,))
        return seq, last - done_upto

    def oldest_after(self, after: int) -> float | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(
            f"SELECT min(timestamp) FROM (SELECT timestamp FROM {self._table_name} "
            "WHERE _id > ? ORDER BY _id LIMIT 1)",
            (after,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_attempts(self, key: int, seq: int, attempts: int, acks: _Acks) -> None:
        """Job `seq` (in row `key`) failed `attempts` times; the jobs before it are done.

        The acknowledgements not yet committed go in the same transaction: the row's
        progress must never reach the disk ahead of the acknowledgements before it (a
        replay after a crash is one run from the oldest unacknowledged job).
        """
        conn: sqlite3.Connection = self._conn
        with _transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            conn.execute(
                f"UPDATE {self._table_name} SET attempts = ?, done_upto = ? WHERE _id = ?",
                (attempts, seq - 1, key),
            )

    def bury(self, job: Job, key: int, error: str, acks: _Acks) -> None:
        """Move `job` (in row `key`) to the dead letters (and flush earlier acknowledgements)."""
        conn: sqlite3.Connection = self._conn
        with _transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.seq, orjson.dumps(job.payload), job.received_at, job.source, job.sequence,
                 job.attempt, error, time.time()),
            )
            if job.seq >= key:  # the row's last job: the row is done
                conn.execute(f"DELETE FROM {self._table_name} WHERE _id = ?", (key,))
            else:
                conn.execute(
                    f"UPDATE {self._table_name} SET done_upto = ?, attempts = 0 WHERE _id = ?",
                    (job.seq, key),
                )

    def dead(self, limit: int, offset: int) -> list[DeadJob]:
        conn: sqlite3.Connection = self._conn
        rows = conn.execute(
            "SELECT seq, data, timestamp, source, sequence, attempts, error, failed_at "
            "FROM dead_letters ORDER BY seq LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [_dead_job(r) for r in rows]

    def dead_one(self, seq: int) -> DeadJob | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(
            "SELECT seq, data, timestamp, source, sequence, attempts, error, failed_at "
            "FROM dead_letters WHERE seq = ?",
            (seq,),
        ).fetchone()
        return None if row is None else _dead_job(row)

    def purge_keys(self, older_than: float) -> int:
        conn: sqlite3.Connection = self._conn
        cur = conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (older_than,))
        return cur.rowcount

    def revive(self, seqs: Sequence[int], acks: _Acks) -> list[Job]:
        """Move dead letters back into the job table under their old seqs, first in line."""
        conn: sqlite3.Connection = self._conn
        revived: list[Job] = []
        with _transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            for seq in sorted(set(seqs)):
                row = conn.execute(
                    "SELECT data, timestamp, source, sequence FROM dead_letters WHERE seq = ?",
                    (seq,),
                ).fetchone()
                if row is None:
                    continue
                group = _encode_group(row[1], row[2], row[3], b"[" + row[0] + b"]")
                conn.execute(
                    f"INSERT INTO {self._table_name} ({_JOB_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, 0, 1)",
                    (seq, seq, b"[" + group + b"]", row[1], seq - 1),
                )
                conn.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
                revived.append(Job(seq=seq, payload=orjson.loads(row[0]), received_at=row[1],
                                   source=row[2], sequence=row[3]))
        return revived

    def drop_dead(self, seqs: Sequence[int]) -> int:
        conn: sqlite3.Connection = self._conn
        dropped = 0
        with _transaction(conn):
            for seq in set(seqs):
                dropped += conn.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,)).rowcount
        return dropped

    def close(self) -> None:
        """Mark a clean shutdown, then close the connection (in its own thread)."""
        conn: sqlite3.Connection | None = getattr(self, "_putter", None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("UPDATE meta SET value = 1 WHERE key = 'clean_shutdown'")
        self.close_connection()

    def checkpoint(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _row(first: int, last: int, events: list[bytes], ts: float
         ) -> tuple[int, int, bytes, float, int]:
    """INSERT parameters of a row: key (last seq), first seq, data, timestamp, done_upto."""
    return (last, first, b"[" + b",".join(events) + b"]", ts, first - 1)


def _dead_job(r: tuple[Any, ...]) -> DeadJob:
    return DeadJob(seq=r[0], payload=orjson.loads(r[1]), received_at=r[2], source=r[3],
                   sequence=r[4], attempts=r[5], error=r[6], failed_at=r[7])


def _refuse_damaged(path: Path) -> None:
    """Raise QueueCorruptError if a file left by an unclean stop fails its check.

    Runs on a read-only connection BEFORE persist-queue opens the file, so a refused
    start changes nothing in it (no table created, no WAL checkpointed on close).
    """
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return  # the regular open reports it
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) in _SQLITE_DAMAGED:
                raise QueueCorruptError(path, [str(exc)]) from None
            return  # no meta table yet: a new or foreign file, the regular open decides
        if row is not None and not row[0]:
            # The last run did not close the file (crash, kill -9, power loss): check it
            # before trusting it. A clean run skips this, so start-up stays fast.
            problems = integrity_problems(conn)
            if problems:
                raise QueueCorruptError(path, problems)
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
        for row in conn.execute(f"SELECT {_JOB_COLUMNS} FROM {_JOBS_TABLE} ORDER BY _id"):
            if _bad_job_row(row):
                problems.append(f"job row {row[0]}: {_bad_job_row(row)}")
                if len(problems) >= limit:
                    return problems
        for row in conn.execute(f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY seq"):
            if _bad_dead_row(row):
                problems.append(f"dead letter {row[0]}: {_bad_dead_row(row)}")
                if len(problems) >= limit:
                    return problems
    except sqlite3.Error as exc:
        problems.append(str(exc))
    return problems


def _bad_job_row(row: tuple[Any, ...]) -> str:
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
        if sum(_group_sizes(data)) != last - first + 1:
            return "event count does not match the seq range"
        _decode_row(row)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        return f"undecodable ({exc})"
    return ""


def _bad_dead_row(row: tuple[Any, ...]) -> str:
    """Why a dead-letter row cannot be used as it is ("" when it can)."""
    try:
        if not (isinstance(row[0], int) and isinstance(row[1], bytes)
                and isinstance(row[6], str)):
            return "bad column types"
        _dead_job(row)
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
        conn = _connect_read_only(path)
    except sqlite3.Error as exc:
        return FileReport(path=path, exists=True, problems=[str(exc)])
    try:
        problems = integrity_problems(conn, full=full)
        if problems:
            return FileReport(path=path, exists=True, problems=problems)
        try:
            table = _JOBS_TABLE
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
        _give_back(path, [s for s, existed in before.items() if not existed])


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: no checkpoint on close, no write of any kind.

    Without a WAL (the daemon stopped cleanly) the file is opened as immutable, so SQLite
    creates no -wal/-shm beside it either. With a WAL (a crash, or a running daemon)
    it must be read through the WAL index, which SQLite may have to create.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None)


def _give_back(path: Path, suffixes: list[str]) -> None:
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
            f"SELECT {_JOB_COLUMNS} FROM {_JOBS_TABLE} WHERE revived = 1 ORDER BY _id"
        ).fetchall()
        regular = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM {_JOBS_TABLE} WHERE revived = 0 ORDER BY _id"
        ).fetchall()
    finally:
        conn.close()
    return _JobTable._page(revived).jobs + _JobTable._page(regular).jobs


@dataclass(frozen=True, slots=True)
class RecoverReport:
    """What `collector recover` did (or, with dry_run, would do)."""

    damaged_moved_to: Path
    jobs_salvaged: int  # jobs still to do, in the salvaged rows
    dead_salvaged: int
    unreadable_ranges: list[tuple[int, int]]  # seqs whose jobs could not be read
    next_seq: int
    keys_salvaged: int = 0  # Idempotency-Keys kept
    rows_salvaged: int = 0
    dry_run: bool = False


class NothingToRecoverError(StorageError):
    """There is no queue file in the data dir."""


_SALVAGE_PROBES: Final = 20_000  # reads per table before the rest is given up as unreadable
_ROWID_MIN: Final = -(2**63)
_ROWID_MAX: Final = 2**63 - 1
_DEAD_COLUMNS: Final = "seq, data, timestamp, source, sequence, attempts, error, failed_at"
_KEY_COLUMNS: Final = "key, first_seq, last_seq, accepted, created_at"


def recover_file(data_dir: Path, *, dry_run: bool = False) -> RecoverReport:
    """Move a damaged queue file aside and salvage every readable job, in order.

    The damaged file (and its -wal/-shm) is renamed, never deleted, and never written:
    it is read through a read-only connection. Jobs keep their seq (and their failed
    attempts); dead letters and Idempotency-Keys are kept too. If the highest seq ever
    used cannot be read, new seqs start far above the salvaged ones, so that no handler
    mistakes a new job for one it already applied.

    The new file is built completely under a temporary directory first; only then are
    the damaged files renamed aside and the new one renamed into place, so a crash
    during the (possibly long) salvage leaves the data dir as it was. The caller holds
    the data dir's lock, so no daemon starts in between. With `dry_run`, nothing is
    written or moved: the report says what would be salvaged.
    """
    path = data_dir / QUEUE_FILE
    if not path.exists():
        raise NothingToRecoverError(f"no queue file {path}: nothing to recover")
    before = {s: Path(f"{path}{s}").exists() for s in ("-wal", "-shm")}
    old = _open_for_salvage(path)
    try:
        jobs, bad_keys = _salvage(old, _JOBS_TABLE, _JOB_COLUMNS, _bad_job_row)
        dead, _ = _salvage(old, "dead_letters", _DEAD_COLUMNS, _bad_dead_row)
        keys, _ = _salvage(old, "idempotency_keys", _KEY_COLUMNS, _bad_key_row)
        known_last = _read_or_none(
            old, "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'jobs_v1'")
        processed = _read_or_none(
            old, "SELECT value FROM meta WHERE key = 'processed_total'")
    finally:
        if old is not None:
            old.close()
        _give_back(path, [s for s, existed in before.items() if not existed])
    highest = max([r[0] for r in jobs] + [r[0] for r in dead] + [0])
    last = highest + _SEQ_MARGIN_WHEN_UNKNOWN if known_last is None else max(known_last, highest)
    report = RecoverReport(
        damaged_moved_to=_aside_name(path), jobs_salvaged=sum(r[0] - r[4] for r in jobs),
        dead_salvaged=len(dead), unreadable_ranges=_lost_seqs(jobs, bad_keys, last),
        next_seq=last + 1, keys_salvaged=len(keys), rows_salvaged=len(jobs), dry_run=dry_run,
    )
    if dry_run:
        return report
    build = Path(tempfile.mkdtemp(prefix=".recover-", dir=data_dir))
    table = _JobTable(build, durability="full")
    conn: sqlite3.Connection = table._conn
    with _transaction(conn):
        conn.executemany(
            f"INSERT INTO {_JOBS_TABLE} ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", jobs)
        conn.executemany(f"INSERT INTO dead_letters ({_DEAD_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead)
        conn.executemany(f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?)", keys)
        # sqlite_sequence has no unique name: update the row the inserts made, or add one.
        if not conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs_v1'", (last,)
        ).rowcount:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs_v1', ?)", (last,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'processed_total'",
                     (processed or 0,))
    table.checkpoint()
    table.close()  # marks a clean stop
    _fsync(build / QUEUE_FILE)
    aside = report.damaged_moved_to
    # The WAL first: a fresh queue.db next to the old WAL would read the old frames.
    for suffix in ("-wal", "-shm", ""):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    (build / QUEUE_FILE).rename(path)
    with contextlib.suppress(OSError):
        shutil.rmtree(build)
    _fsync(data_dir)
    return report


def _open_for_salvage(path: Path) -> sqlite3.Connection | None:
    """A read-only connection that reads what it can, or None if nothing can be read."""
    try:
        conn = _connect_read_only(path)
    except sqlite3.Error:
        return None
    try:
        # A file shorter than its header says (truncated) is refused as a whole unless
        # the schema checks are relaxed; on a read-only connection this writes nothing.
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()  # not a database at all, or its schema is gone
        return None
    return conn


def _aside_name(path: Path) -> Path:
    """A name for the damaged file that no earlier recovery used."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{QUEUE_FILE}.damaged-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        aside = path.with_name(f"{QUEUE_FILE}.damaged-{stamp}-{n}")
    return aside


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_or_none(conn: sqlite3.Connection | None, sql: str) -> int | None:
    """One integer from `sql`, or None when it cannot be read."""
    if conn is None:
        return None
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row and isinstance(row[0], int) else None


def _bad_key_row(row: tuple[Any, ...]) -> str:
    key, first, last, accepted, created = row
    ok = (isinstance(key, str) and isinstance(first, int) and isinstance(last, int)
          and isinstance(accepted, int) and isinstance(created, int | float))
    return "" if ok else "bad column types"


def _salvage(
    conn: sqlite3.Connection | None, table: str, columns: str,
    bad: Callable[[tuple[Any, ...]], str],
) -> tuple[list[tuple[Any, ...]], list[tuple[int, int]]]:
    """Every readable, decodable row of `table` in rowid order, and the rowid ranges
    that could not be read (or decoded).

    One ordered read does it when the table is sound. When a read fails, the rest of its
    range is split in halves and each half read again, breadth first, so the readable
    rows around a damaged page are found with a number of reads that grows with the
    damage, not with the size of the file, and never beyond _SALVAGE_PROBES.
    """
    if conn is None:
        return [], [(_ROWID_MIN, _ROWID_MAX)]
    sql = (f"SELECT rowid, {columns} FROM {table} "
           "WHERE rowid BETWEEN ? AND ? ORDER BY rowid")
    found: dict[int, tuple[Any, ...]] = {}  # rowid -> row (a range may be read twice)
    unreadable: list[tuple[int, int]] = []
    todo: deque[tuple[int, int]] = deque([(_ROWID_MIN, _ROWID_MAX)])
    probes = 0
    while todo:
        low, high = todo.popleft()
        if probes >= _SALVAGE_PROBES:
            unreadable.append((low, high))
            continue
        probes += 1
        try:
            for row in conn.execute(sql, (low, high)):
                low = row[0] + 1
                if bad(row[1:]):
                    unreadable.append((row[0], row[0]))
                else:
                    found[row[0]] = row[1:]
            continue
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return [], []  # never created: nothing lost
        if low > high:
            continue
        if low == high:
            unreadable.append((low, low))
            continue
        middle = low + (high - low) // 2
        todo.extend([(low, middle), (middle + 1, high)])
    merged: list[tuple[int, int]] = []
    for a, b in sorted(unreadable):
        if merged and merged[-1][1] + 1 >= a:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return [found[rowid] for rowid in sorted(found)], merged


def _lost_seqs(jobs: list[tuple[Any, ...]], bad_keys: list[tuple[int, int]], last: int
               ) -> list[tuple[int, int]]:
    """The seqs whose jobs may sit in the unreadable rows (keys are rows' last seqs)."""
    lost: list[tuple[int, int]] = []
    keys = [int(r[0]) for r in jobs]
    firsts = [int(r[1]) for r in jobs]
    for a, b in bad_keys:
        before = bisect.bisect_left(keys, a)
        after = bisect.bisect_right(keys, b)
        low = keys[before - 1] + 1 if before else 1
        high = firsts[after] - 1 if after < len(keys) else last
        low, high = max(low, 1), min(high, b, last)
        if low <= high and (not lost or lost[-1][1] < low):
            lost.append((low, high))
    return lost


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, sqlite3.Error):
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return StorageFullError(str(exc))
        return StorageError(str(exc))
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))


class DurableQueue:
    """Durable FIFO of jobs with group commit, batched acknowledgement and a memory window."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durability: Literal["full", "normal"] = "full",
        max_pending: int = 1_000_000,
        ack_interval_ms: int = 50,
        idempotency_ttl_hours: float = 48.0,
        max_bytes: int = 0,
    ) -> None:
        self._dir = data_dir
        self._max_bytes = max_bytes
        self._durability: Literal["full", "normal"] = durability
        self._max_pending = max_pending
        self._ack_interval = ack_interval_ms / 1000
        self._ttl_s = idempotency_ttl_hours * 3600
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-queue")
        self._table: _JobTable | None = None
        self._open = False
        self._closing = False
        # Group commit: requests and acknowledgement batches wait in the outbox, in order,
        # for the writer (see _write_outbox). deque.append and popleft are atomic, so the
        # loop adds and the writer's thread takes without a lock.
        self._outbox: deque[_Put | _Acks] = deque()
        self._writer: asyncio.Future[None] | None = None  # the writer's run, while it runs
        self._queued_events = 0  # events in puts not yet settled (counted against the bound)
        self._ack_batches = 0  # acknowledgement batches in the outbox or being written
        # Sequence bookkeeping (all on the loop).
        self._next_seq = 1  # the seq after the last one known committed
        self._stored = 0  # jobs in the file not yet known done there
        self._dead = 0
        self._processed_flushed = 0
        self._done_upto = 0  # every regular job <= this is acknowledged or dead
        self._acks = 0  # acknowledgements not yet committed
        self._done_rows: list[int] = []  # keys of rows wholly done, not yet deleted
        self._acks_committing = 0  # acknowledgements inside a running transaction
        self._flush_timer: asyncio.TimerHandle | None = None
        # Hand-off to the worker: the window holds jobs of whole rows, `_spans` those rows
        # (oldest first, including rows whose jobs were already taken but are not done).
        self._window: deque[Job] = deque()
        self._spans: deque[_Span] = deque()
        self._revived: deque[Job] = deque()  # dead letters put back in their old place
        self._revived_seqs: set[int] = set()
        self._cursor = 0  # highest seq handed to the window
        self._wakeup = asyncio.Event()
        self._in_flight: Job | None = None
        #: Called after each successful group commit with (requests, rows, seconds); the
        #: metrics module sets it. Runs on the loop; must be cheap.
        self.on_commit: Callable[[int, int, float], None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the queue file; jobs left from a crash come first, in order."""
        loop = asyncio.get_running_loop()
        try:
            self._table = await loop.run_in_executor(
                self._executor,
                lambda: _JobTable(self._dir, durability=self._durability,
                                  max_bytes=self._max_bytes),
            )
            state = await loop.run_in_executor(self._executor, self._table.state)
            await loop.run_in_executor(self._executor, self._table.mark_open)
        except BaseException as exc:
            if self._table is not None:
                await loop.run_in_executor(self._executor, self._table.close_connection)
                self._table = None
            self._executor.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                if getattr(exc, "sqlite_errorcode", None) in _SQLITE_DAMAGED:
                    # "file is not a database", "malformed": the file is kept as it is.
                    raise QueueCorruptError(self.path, [str(exc)]) from None
                raise StorageError(f"cannot open {self.path}: {exc}") from None
            raise
        self._next_seq = state.last_seq + 1
        if state.head_first is None or state.head_done is None:
            self._done_upto = self._cursor = state.last_seq
        else:
            self._done_upto = state.head_done
            self._cursor = state.head_first - 1
        self._stored, self._dead = state.pending, state.dead
        self._processed_flushed = state.processed
        self._revived.extend(state.revived.jobs)
        self._revived_seqs.update(job.seq for job in state.revived.jobs)
        self._open = True
        log.info("queue_opened", path=str(self.path), pending=state.pending, dead=state.dead,
                 last_seq=state.last_seq, durability=self._durability)

    async def close(self) -> None:
        """Commit what is waiting (requests and acknowledgements), then close the file."""
        if not self._open:
            return
        self._closing = True
        self._push_acks()
        # The writer writes what is waiting; a batch that fails now is given up (its
        # callers get the error; lost acknowledgements only replay jobs).
        while self._writer is not None or self._outbox:
            self._kick()
            if self._writer is not None:
                await asyncio.wait({self._writer})
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        table = self._table
        assert table is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(sqlite3.Error):
            await loop.run_in_executor(self._executor, table.checkpoint)
        await loop.run_in_executor(self._executor, table.close)
        self._executor.shutdown(wait=True)
        self._open = False
        log.info("queue_closed", pending=self.pending, processed_total=self.processed_total)

    @property
    def path(self) -> Path:
        """The queue's SQLite file."""
        return self._dir / QUEUE_FILE

    @property
    def is_open(self) -> bool:
        """True between open() and close(), while puts are accepted."""
        return self._open and not self._closing

    @property
    def processed_total(self) -> int:
        """Jobs acknowledged ever (dead letters not counted)."""
        return self._processed_flushed + self._acks + self._acks_committing

    def _take_acks(self) -> _Acks:
        """Hand the uncommitted acknowledgements to a transaction about to run."""
        partial = None
        if self._spans and self._spans[0].first <= self._done_upto < self._spans[0].last:
            partial = (self._spans[0].last, self._done_upto)
        acks = _Acks(rows=tuple(self._done_rows), partial=partial, count=self._acks)
        self._acks = 0
        self._done_rows = []
        self._acks_committing += acks.count
        return acks

    def _acks_settled(self, acks: _Acks, *, committed: bool) -> None:
        self._acks_committing -= acks.count
        if committed:
            self._stored -= acks.count
            self._processed_flushed += acks.count
        elif not self._closing:  # the next commit retries them
            self._acks += acks.count
            self._done_rows.extend(acks.rows)

    # -- producers -------------------------------------------------------------------------

    async def put(
        self,
        payloads: Sequence[Any],
        *,
        blobs: list[bytes] | None = None,
        array: bytes | None = None,
        source: str | None = None,
        sequence: int | None = None,
        key: str | None = None,
        received_at: float | None = None,
    ) -> Accepted:
        """Store one request's events (all or none); return once they are on disk.

        `array` (the events as one JSON array text) or `blobs` (each event's JSON text)
        are the bytes as received, which must be valid JSON; they are stored as they are,
        without serialising `payloads` again.
        """
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        if not payloads:
            raise ValueError("no events")
        n = len(payloads)
        loop = asyncio.get_running_loop()
        if self.pending + self._queued_events + n > self._max_pending:
            if key is not None and self._table is not None:
                known = await loop.run_in_executor(
                    self._executor, self._table.lookup_key, key, self._ttl_s
                )
                if known is not None:
                    return known
            raise QueueFullError(f"{self.pending} jobs pending (max {self._max_pending})")
        put = _Put(
            array=(array if array is not None
                   else b"[" + b",".join(blobs) + b"]" if blobs is not None
                   else orjson.dumps(list(payloads))),
            count=n,
            payloads=payloads,
            received_at=time.time() if received_at is None else received_at,
            source=source,
            sequence=sequence,
            key=key,
            future=loop.create_future(),
        )
        self._outbox.append(put)
        self._queued_events += n
        self._kick()
        return await put.future

    # -- the writer --------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start the writer if the outbox holds something and it is not running."""
        if self._writer is None and self._outbox:
            loop = asyncio.get_running_loop()
            self._writer = loop.run_in_executor(self._executor, self._write_outbox, loop)
            self._writer.add_done_callback(self._writer_done)

    def _writer_done(self, run: asyncio.Future[None]) -> None:
        self._writer = None
        if not run.cancelled() and run.exception() is not None:  # pragma: no cover - a bug
            log.error("queue_writer_failed", error=repr(run.exception()))
        self._kick()  # what came in after the writer found the outbox empty

    def _write_outbox(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the executor thread: commit everything in the outbox as one group, then
        whatever came in meanwhile as the next, until the outbox is empty.

        This is the group commit. The thread takes a group the moment it is ready for
        one, so it never idles while the loop gathers requests, and it keeps the GIL
        between groups instead of waiting for it again at each start. After
        _GROUPS_PER_RUN groups it returns so that other executor work (pages for the
        worker, dead letters) gets a turn; _writer_done starts it again. Results go back
        to the loop through call_soon_threadsafe, group after group, in order.
        """
        table = self._table
        assert table is not None
        outbox = self._outbox
        for _ in range(_GROUPS_PER_RUN):
            puts: list[_Put] = []
            acks: list[_Acks] = []
            while outbox:
                item = outbox.popleft()
                if isinstance(item, _Put):
                    puts.append(item)
                else:
                    acks.append(item)
            if not puts and not acks:
                return
            started = time.perf_counter()
            try:
                results, spans = table.commit(puts, _Acks.merge(acks) if acks else _Acks(),
                                              self._ttl_s)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the callers
                loop.call_soon_threadsafe(self._write_failed, puts, acks, exc)
            else:
                loop.call_soon_threadsafe(self._written, puts, acks, results, spans,
                                          time.perf_counter() - started)

    def _written(self, puts: list[_Put], acks: list[_Acks], results: list[Accepted],
                 spans: list[_Span], seconds: float) -> None:
        """A group is committed: account for it and answer its requests."""
        self._queued_events -= sum(p.count for p in puts)
        self._ack_batches -= len(acks)
        for batch in acks:
            self._acks_settled(batch, committed=True)
        self._committed(puts, results, spans)
        if self.on_commit is not None and puts:
            rows = sum(r.accepted for r in results if not r.replayed)
            self.on_commit(len(puts), rows, seconds)
        for put, result in zip(puts, results, strict=True):
            if not put.future.done():  # else the caller went away; the events are stored
                put.future.set_result(result)

    def _write_failed(self, puts: list[_Put], acks: list[_Acks], exc: Exception) -> None:
        """A group failed as a whole: its requests get the error, its acknowledgements
        are tried again later (or given up at close)."""
        self._queued_events -= sum(p.count for p in puts)
        self._ack_batches -= len(acks)
        err = _translate(exc)
        log.error("queue_commit_failed", error=str(exc), requests=len(puts))
        for put in puts:
            if not put.future.done():
                put.future.set_exception(err)
        for batch in acks:
            self._acks_settled(batch, committed=False)
        if self._acks or self._done_rows:
            self._schedule_flush(_RETRY_AFTER_FAILURE_S)

    def _push_acks(self) -> None:
        """Hand the acknowledgements so far to the writer (they need no fsync of their own)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not (self._acks or self._done_rows):
            return
        self._outbox.append(self._take_acks())
        self._ack_batches += 1
        self._kick()

    async def _acks_written(self) -> None:
        """Wait until every acknowledgement batch handed to the writer is settled."""
        while self._ack_batches:
            self._kick()
            writer = self._writer
            assert writer is not None, "acknowledgements wait but the writer is not running"
            await asyncio.wait({writer})

    def _committed(self, puts: list[_Put], results: list[Accepted], spans: list[_Span]) -> None:
        """Account for newly stored jobs and hand them to the worker from memory if we can."""
        if not spans:
            return
        fresh = [(p, r) for p, r in zip(puts, results, strict=True) if not r.replayed]
        self._next_seq = spans[-1].last + 1
        self._stored += sum(r.accepted for _p, r in fresh)
        self._dead -= sum(1 for p, _r in fresh if p.revive is not None)
        # The window holds whole rows, contiguous right after what the worker has.
        if spans[0].first == self._cursor + 1 and len(self._window) < _MEMORY_WINDOW:
            window = self._window
            for put, result in fresh:
                seq = first = result.first_seq
                sequence = put.sequence
                for payload in put.payloads:
                    window.append(Job(seq, payload, put.received_at, 1, put.source,
                                      None if sequence is None else sequence + seq - first))
                    seq += 1
            self._spans.extend(spans)
            self._cursor = spans[-1].last
        self._wakeup.set()

    # -- the consumer ------------------------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """The head job if it is already in memory (the fast path), else None."""
        if self._revived:
            job = self._revived.popleft()
        elif self._window:
            job = self._window.popleft()
        else:
            return None
        self._in_flight = job
        return job

    async def next_job(self) -> Job:
        """Wait for and return the job at the head of the line (strict seq order)."""
        loop = asyncio.get_running_loop()
        table = self._table
        assert table is not None
        while True:
            job = self.take_nowait()
            if job is not None:
                return job
            if self._cursor < self._next_seq - 1:
                page = await loop.run_in_executor(
                    self._executor, table.fetch, self._cursor, _PAGE_ROWS
                )
                for _seq, lost in page.set_aside:
                    self._stored -= lost
                    self._dead += 1
                if self._window:  # a commit was handed over meanwhile: it comes after
                    first = self._window[0].seq
                    self._window.extendleft(reversed([j for j in page.jobs if j.seq < first]))
                    self._spans.extendleft(reversed([s for s in page.spans if s.last < first]))
                else:
                    self._window.extend(page.jobs)
                    self._spans.extend(page.spans)
                    if page.spans:
                        self._cursor = max(self._cursor, page.spans[-1].last)
                if not page.spans and not self._window:
                    # Nothing on disk past the cursor: everything there was dead-lettered.
                    self._cursor = self._next_seq - 1
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def ack(self, job: Job) -> None:
        """The job is done; its row goes when all its jobs are done (committed in groups)."""
        self._finish(job)
        self._acks += 1
        if self._ack_interval == 0 or self._acks >= _ACKS_FORCE_FLUSH:
            self._push_acks()
        else:
            self._schedule_flush()

    def _row_key(self, job: Job) -> int:
        """The key of the row that holds `job`."""
        if job.seq in self._revived_seqs:
            return job.seq
        for span in self._spans:
            if span.first <= job.seq <= span.last:
                return span.last
        raise LookupError(f"job {job.seq} is not in a known row")  # pragma: no cover

    def _finish(self, job: Job) -> None:
        """`job` is done: rows wholly done move to the delete list."""
        if self._in_flight is not None and self._in_flight.seq == job.seq:
            self._in_flight = None
        if job.seq in self._revived_seqs:
            self._revived_seqs.discard(job.seq)
            self._done_rows.append(job.seq)
            return
        self._done_upto = max(self._done_upto, job.seq)
        spans = self._spans
        while spans and spans[0].last <= self._done_upto:
            self._done_rows.append(spans.popleft().last)

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(
                self._ack_interval if delay is None else delay, self._flush_due
            )

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._push_acks()

    async def record_attempt(self, job: Job) -> None:
        """Persist that `job` failed `job.attempt` times, so max_attempts holds across restarts."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        await self._acks_written()  # the row's progress must not overtake earlier acks
        acks = self._take_acks()
        try:
            await loop.run_in_executor(
                self._executor, self._table.set_attempts, self._row_key(job), job.seq,
                job.attempt, acks,
            )
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)

    async def dead_letter(self, job: Job, error: str) -> None:
        """Move `job` to the durable dead-letter store; the line moves on."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        await self._acks_written()
        key = self._row_key(job)
        acks = self._take_acks()
        try:
            await loop.run_in_executor(self._executor, self._table.bury, job, key, error, acks)
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)
        self._stored -= 1
        self._dead += 1
        self._finish(job)
        if self._done_rows and self._done_rows[-1] == key:
            self._done_rows.pop()  # bury already deleted that row

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadJob]:
        """Dead-lettered jobs in seq order."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._table.dead, limit, offset)

    async def dead_letter_get(self, seq: int) -> DeadJob | None:
        """One dead letter by seq, or None."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._table.dead_one, seq)

    async def retry_dead(self, seqs: Sequence[int], *, at_tail: bool = False) -> list[Job]:
        """Put dead letters back in line: in their old place (next up) or at the tail.

        In their old place they keep their seq and run before every pending job; at the
        tail they get new seqs after the newest job (through the group commit, so that
        seqs are handed out in one place). Returns the revived jobs.
        """
        assert self._table is not None
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        if at_tail:
            return await self._revive_at_tail(seqs)
        loop = asyncio.get_running_loop()
        await self._acks_written()
        acks = self._take_acks()
        try:
            revived = await loop.run_in_executor(
                self._executor, self._table.revive, seqs, acks
            )
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)
        self._stored += len(revived)
        self._dead -= len(revived)
        self._revived.extend(revived)
        self._revived_seqs.update(job.seq for job in revived)
        self._wakeup.set()
        return revived

    async def _revive_at_tail(self, seqs: Sequence[int]) -> list[Job]:
        loop = asyncio.get_running_loop()
        puts: list[_Put] = []
        for seq in sorted(set(seqs)):
            dead = await self.dead_letter_get(seq)
            if dead is None:
                continue
            puts.append(_Put(
                array=b"[" + orjson.dumps(dead.payload) + b"]", count=1,
                payloads=[dead.payload],
                received_at=dead.received_at, source=dead.source, sequence=dead.sequence,
                key=None, future=loop.create_future(), revive=seq,
            ))
        self._outbox.extend(puts)
        self._queued_events += len(puts)
        self._kick()
        revived = []
        for put in puts:
            accepted = await put.future
            revived.append(Job(seq=accepted.first_seq, payload=put.payloads[0],
                               received_at=put.received_at, source=put.source,
                               sequence=put.sequence))
        return revived

    async def drop_dead(self, seqs: Sequence[int]) -> int:
        """Delete dead letters for good; returns how many were there."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        dropped = await loop.run_in_executor(self._executor, self._table.drop_dead, seqs)
        self._dead -= dropped
        return dropped

    async def peek(self, limit: int = 10) -> list[Job]:
        """The next jobs in line (the one in flight first), without taking them."""
        jobs: list[Job] = []
        async for job in self.pending_jobs():
            jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    async def pending_jobs(self, page: int = _PAGE_ROWS) -> AsyncIterator[Job]:
        """Every job not yet done, in line order (the one in flight first), page by page."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        if self._in_flight is not None:
            yield self._in_flight
        for job in list(self._revived):
            yield job
        after_seq = self._in_flight.seq if self._in_flight is not None else self._done_upto
        # Start with the row holding the first job after `after_seq`.
        after_key = after_seq
        for span in self._spans:
            if span.last > after_seq:
                after_key = span.first - 1
                break
        while True:
            rows = await loop.run_in_executor(self._executor, self._table.fetch, after_key,
                                              page)
            if not rows.spans:
                return
            for job in rows.jobs:
                if job.seq > after_seq:
                    yield job
            after_key = rows.spans[-1].last

    async def purge_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys older than the retention; returns how many."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        cutoff = time.time() - self._ttl_s
        return await loop.run_in_executor(self._executor, self._table.purge_keys, cutoff)

    # -- numbers ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs stored and not yet finished (the one in flight included)."""
        return self._stored - self._acks - self._acks_committing

    @property
    def last_seq(self) -> int:
        """The highest seq ever committed (0 when none)."""
        return self._next_seq - 1

    async def stats(self) -> QueueStats:
        """Numbers for /v1/queue."""
        oldest: float | None = None
        if self._in_flight is not None:
            oldest = self._in_flight.received_at
        elif self._revived:
            oldest = self._revived[0].received_at
        elif self._window:
            oldest = self._window[0].received_at
        elif self.pending and self._table is not None:
            loop = asyncio.get_running_loop()
            oldest = await loop.run_in_executor(
                self._executor, self._table.oldest_after, self._done_upto
            )
        in_flight = 1 if self._in_flight is not None else 0
        return QueueStats(
            pending=self.pending - in_flight,
            in_flight=in_flight,
            dead=self._dead,
            processed_total=self.processed_total,
            last_seq=self.last_seq,
            oldest_pending_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        )
