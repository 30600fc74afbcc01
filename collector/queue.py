"""The durable FIFO: the only module that touches persist-queue and the queue's SQLite file.

Design (see README "How it works"):

* Storage is persist-queue's ``SQLiteBase`` with our own SQL: one row per job, keyed by
  an AUTOINCREMENT ``_id`` that is the job's ``seq``. Rows are deleted when acknowledged,
  so taking the next job is one index seek whether 0 or 10**6 jobs were processed before.
* Every SQLite call runs in one executor thread owned by this module.
* Concurrent ``put`` calls are group-committed: while one transaction is being written,
  new requests gather, and the next transaction carries them all (all or none, so each
  request is all or none too). A request is answered only after the COMMIT returned;
  with ``durability = "full"`` that COMMIT is fsynced (``synchronous=FULL``).
* Acknowledgements are batched: they are committed together every ``ack_interval_ms``
  (and before a dead letter moves, and at close), without an fsync of their own. A
  lost acknowledgement only replays a job (at least once).
* Jobs just committed are handed to the worker from memory, so it does not read back
  what was just written; only a backlog beyond the in-memory window is read from disk,
  in pages, in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

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

log = structlog.get_logger(__name__)

QUEUE_FILE: Final = "queue.db"
_MEMORY_WINDOW: Final = 4096  # jobs handed to the worker from memory at most
_PAGE: Final = 512  # jobs read from disk per executor call
_SQLITE_FULL: Final = 13
_SQLITE_DAMAGED: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_JOBS_TABLE: Final = "jobs_v1"  # persist-queue names it {_TABLE_NAME}_{name}
_COLUMNS: Final = 5  # parameters per inserted row
_MAX_CHUNK: Final = 256  # rows per INSERT statement
_WAL_LIMIT_BYTES: Final = 16 * 1024 * 1024
_ACKS_FORCE_FLUSH: Final = 10_000  # acknowledgements that trigger a commit of their own
_RETRY_AFTER_FAILURE_S: Final = 1.0  # acknowledgements wait this long after a failed commit


class _JsonSerializer:
    """persist-queue serializer backed by orjson: client data is never unpickled."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    @staticmethod
    def loads(raw: bytes) -> Any:
        return orjson.loads(raw)

    @staticmethod
    def dump(value: Any, fp: BinaryIO) -> None:
        fp.write(orjson.dumps(value) + b"\n")

    @staticmethod
    def load(fp: BinaryIO) -> Any:
        return orjson.loads(fp.readline())


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

    blobs: list[bytes]
    payloads: Sequence[Any]
    received_at: float
    source: str | None
    sequence: int | None
    key: str | None
    future: asyncio.Future[Accepted] = field(repr=False)
    revive: int | None = None  # the dead letter this put brings back at the tail


@dataclass(frozen=True, slots=True)
class _Acks:
    """Acknowledgements to commit: the id range (after, upto] plus single ids.

    A range, not "everything <= upto": a dead letter put back in its old place has an
    id below `upto` and must survive the next flush.
    """

    after: int = 0
    upto: int = 0
    count: int = 0
    ids: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters for /v1/queue."""

    pending: int
    in_flight: int
    dead: int
    processed_total: int
    last_seq: int
    oldest_pending_age_s: float | None


class _JobTable(SQLiteBase):
    """persist-queue's SQLite base with the job table, dead letters and idempotency keys."""

    _TABLE_NAME = "jobs"
    _KEY_COLUMN = "_id"
    _SQL_CREATE = (
        "CREATE TABLE IF NOT EXISTS {table_name} ("
        "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL, "
        "timestamp FLOAT NOT NULL, source TEXT, sequence INTEGER, "
        "attempts INTEGER NOT NULL DEFAULT 0)"
    )
    _SQL_INSERT = (
        "INSERT INTO {table_name} ({key_column}, data, timestamp, source, sequence) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    _SQL_SELECT = (
        "SELECT {key_column}, data, timestamp, source, sequence, attempts "
        "FROM {table_name} WHERE {key_column} > ? ORDER BY {key_column} LIMIT ?"
    )
    _SQL_DELETE = "DELETE FROM {table_name} WHERE {key_column} > ? AND {key_column} <= ?"

    @property
    def _sql_delete(self) -> str:
        return self._SQL_DELETE.format(table_name=self._table_name, key_column=self._key_column)

    @property
    def _sql_fetch(self) -> str:
        return self._SQL_SELECT.format(table_name=self._table_name, key_column=self._key_column)

    def __init__(
        self, path: Path, *, durability: Literal["full", "normal"], max_bytes: int = 0
    ) -> None:
        self._durability = durability
        self._max_bytes = max_bytes
        super().__init__(
            str(path), name="v1", serializer=_JsonSerializer, db_file_name=QUEUE_FILE,
            timeout=30.0,
        )

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
        (clean,) = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        if not clean:
            # The last run did not close the file (crash, kill -9, power loss): check it
            # before trusting it. A clean run skips this, so start-up stays fast.
            problems = integrity_problems(conn)
            if problems:
                raise QueueCorruptError(self.file, problems)
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'clean_shutdown'")
        if self._max_bytes:
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA max_page_count={max(1, self._max_bytes // page_size)}")
        conn.execute("PRAGMA synchronous=" + self._durability.upper())
        # After each checkpoint the WAL is cut back to this size instead of keeping its peak.
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
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

    def state(self) -> tuple[int, int, int, int, int]:
        """(last seq ever assigned, first pending seq or 0, rows, dead letters, processed)."""
        conn: sqlite3.Connection = self._conn
        # persist-queue's _table_name is quoted (`jobs_v1`); sqlite_sequence holds the bare name.
        row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (_JOBS_TABLE,)
        ).fetchone()
        last = row[0] if row else 0
        (min_id, max_id) = conn.execute(
            f"SELECT coalesce(min(_id), 0), coalesce(max(_id), 0) FROM {self._table_name}"
        ).fetchone()
        (pending,) = conn.execute(f"SELECT count(*) FROM {self._table_name}").fetchone()
        (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        (processed,) = conn.execute(
            "SELECT value FROM meta WHERE key = 'processed_total'"
        ).fetchone()
        return max(last, max_id), min_id, pending, dead, processed

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
        if acks.upto > acks.after:
            conn.execute(self._sql_delete, (acks.after, acks.upto))
        if acks.ids:
            conn.executemany(
                f"DELETE FROM {self._table_name} WHERE _id = ?", [(i,) for i in acks.ids]
            )
        conn.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'processed_total'", (acks.count,)
        )

    def commit(self, puts: list[_Put], next_seq: int, acks: _Acks, ttl_s: float
               ) -> list[Accepted]:
        """One transaction: the acknowledgements so far, then every request's events.

        The transaction is all or none, so each request is too. Rows go in with few
        multi-row INSERTs: each statement releases and retakes the GIL, which the busy
        event loop holds most of the time.
        """
        conn: sqlite3.Connection = self._conn
        results: list[Accepted] = []
        params: list[Any] = []
        if puts and not acks and all(p.key is None and p.revive is None for p in puts):
            # The common case: fresh events only. One INSERT in autocommit mode is one
            # transaction and one statement (one GIL release instead of three).
            for put in puts:
                results.append(self._rows_of(put, next_seq, params))
                next_seq += len(put.blobs)
            if len(params) <= _MAX_CHUNK * _COLUMNS:
                conn.execute(_multi_row(self._sql_insert, len(params) // _COLUMNS), params)
                return results
            results.clear()  # too many rows for one statement: the general path below
            next_seq -= len(params) // _COLUMNS
        durable = bool(puts)
        if not durable and self._durability == "full":
            # An acknowledgement need not be fsynced: losing one only replays a job, and
            # the next fsynced commit makes every earlier WAL frame durable anyway.
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with _transaction(conn):
                if acks:
                    self._apply_acks(conn, acks)
                now = time.time()
                params = []
                keys: dict[str, Accepted] = {}
                for put in puts:
                    known = None
                    if put.key is not None:
                        known = keys.get(put.key) or self._known_key(conn, put.key, now - ttl_s)
                    if known is not None:
                        results.append(known)
                        continue
                    count = len(put.blobs)
                    result = self._rows_of(put, next_seq, params)
                    if put.key is not None:
                        keys[put.key] = dataclasses.replace(result, replayed=True)
                    results.append(result)
                    next_seq += count
                self._insert_rows(conn, params)
                revived = [(p.revive,) for p in puts if p.revive is not None]
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
        return results

    @staticmethod
    def _rows_of(put: _Put, first: int, params: list[Any]) -> Accepted:
        """Append the INSERT parameters of `put`'s rows, numbered from `first`."""
        for i, blob in enumerate(put.blobs):
            params += (first + i, blob, put.received_at, put.source,
                       None if put.sequence is None else put.sequence + i)
        count = len(put.blobs)
        return Accepted(accepted=count, first_seq=first, last_seq=first + count - 1)

    def _insert_rows(self, conn: sqlite3.Connection, params: list[Any]) -> None:
        """INSERT rows of 5 parameters, in chunks of power-of-two size (few distinct SQL
        texts, so every statement stays in the connection's cache)."""
        rows = len(params) // _COLUMNS
        done = 0
        while done < rows:
            chunk = min(_MAX_CHUNK, 1 << ((rows - done).bit_length() - 1))
            conn.execute(
                _multi_row(self._sql_insert, chunk),
                params[done * _COLUMNS : (done + chunk) * _COLUMNS],
            )
            done += chunk

    def fetch(self, after: int, limit: int) -> list[Job]:
        """The next jobs with seq > `after`, in order."""
        conn: sqlite3.Connection = self._conn
        rows = conn.execute(self._sql_fetch, (after, limit)).fetchall()
        return [
            Job(seq=r[0], payload=orjson.loads(r[1]), received_at=r[2], attempt=r[5] + 1,
                source=r[3], sequence=r[4])
            for r in rows
        ]

    def oldest_after(self, after: int) -> float | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(
            f"SELECT timestamp FROM {self._table_name} WHERE _id > ? ORDER BY _id LIMIT 1",
            (after,),
        ).fetchone()
        return None if row is None else float(row[0])

    def set_attempts(self, seq: int, attempts: int) -> None:
        conn: sqlite3.Connection = self._conn
        conn.execute(f"UPDATE {self._table_name} SET attempts = ? WHERE _id = ?", (attempts, seq))

    def bury(self, seq: int, attempts: int, error: str, acks: _Acks) -> None:
        """Move job `seq` to the dead letters (and flush earlier acknowledgements)."""
        conn: sqlite3.Connection = self._conn
        with _transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters "
                f"SELECT _id, data, timestamp, source, sequence, ?, ?, ? FROM {self._table_name} "
                "WHERE _id = ?",
                (attempts, error, time.time(), seq),
            )
            conn.execute(f"DELETE FROM {self._table_name} WHERE _id = ?", (seq,))

    def dead(self, limit: int, offset: int) -> list[DeadJob]:
        conn: sqlite3.Connection = self._conn
        rows = conn.execute(
            "SELECT seq, data, timestamp, source, sequence, attempts, error, failed_at "
            "FROM dead_letters ORDER BY seq LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [
            DeadJob(seq=r[0], payload=orjson.loads(r[1]), received_at=r[2], source=r[3],
                    sequence=r[4], attempts=r[5], error=r[6], failed_at=r[7])
            for r in rows
        ]

    def purge_keys(self, older_than: float) -> int:
        conn: sqlite3.Connection = self._conn
        cur = conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (older_than,))
        return cur.rowcount

    def dead_one(self, seq: int) -> DeadJob | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(
            "SELECT seq, data, timestamp, source, sequence, attempts, error, failed_at "
            "FROM dead_letters WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is None:
            return None
        return DeadJob(seq=row[0], payload=orjson.loads(row[1]), received_at=row[2],
                       source=row[3], sequence=row[4], attempts=row[5], error=row[6],
                       failed_at=row[7])

    def revive(self, seqs: Sequence[int], acks: _Acks) -> list[Job]:
        """Move dead letters back into the job table under their old seqs."""
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
                conn.execute(self._sql_insert, (seq, row[0], row[1], row[2], row[3]))
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


def integrity_problems(conn: sqlite3.Connection, *, full: bool = False) -> list[str]:
    """What SQLite's own check finds wrong with the open database; [] when it is sound."""
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = conn.execute(f"PRAGMA {pragma}(20)").fetchall()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found


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
    """Read-only look at the queue file of a stopped daemon (no loop is running)."""
    path = data_dir / QUEUE_FILE
    if not path.exists():
        return FileReport(path=path, exists=False, problems=[])
    try:
        # Not read-only: a WAL file left by a crash must be recovered to be read.
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
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
                f"SELECT count(*), min(timestamp), coalesce(max(_id), 0) FROM {table}"
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


@dataclass(frozen=True, slots=True)
class RecoverReport:
    """What `collector recover` did."""

    damaged_moved_to: Path
    jobs_salvaged: int
    dead_salvaged: int
    unreadable_ranges: list[tuple[int, int]]
    next_seq: int


_SEQ_MARGIN_WHEN_UNKNOWN: Final = 1_000_000_000


def recover_file(data_dir: Path) -> RecoverReport:
    """Move a damaged queue file aside and salvage every readable job, in order.

    The damaged file (and its -wal/-shm) is renamed, never deleted. Jobs keep their
    seq. If the highest seq ever used cannot be read, new seqs start far above the
    salvaged ones, so that no handler mistakes a new job for one it already applied.
    """
    path = data_dir / QUEUE_FILE
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{QUEUE_FILE}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    old = sqlite3.connect(aside, isolation_level=None)
    try:
        jobs, unreadable = _salvage_rows(
            old, "jobs_v1", "_id", "_id, data, timestamp, source, sequence, attempts"
        )
        dead, _ = _salvage_rows(
            old, "dead_letters", "seq",
            "seq, data, timestamp, source, sequence, attempts, error, failed_at",
        )
        try:
            row = old.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs_v1'").fetchone()
            known_last: int | None = row[0] if row else 0
        except sqlite3.Error:
            known_last = None
        try:
            meta = dict(old.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error:
            meta = {}
    finally:
        old.close()
    highest = max([r[0] for r in jobs] + [r[0] for r in dead] + [0])
    last = highest + _SEQ_MARGIN_WHEN_UNKNOWN if known_last is None else max(known_last, highest)
    table = _JobTable(data_dir, durability="full")
    conn: sqlite3.Connection = table._conn
    with _transaction(conn):
        conn.executemany(
            "INSERT INTO jobs_v1 (_id, data, timestamp, source, sequence, attempts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            jobs,
        )
        conn.executemany("INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead)
        # sqlite_sequence has no unique name: update the row the inserts made, or add one.
        if not conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs_v1'", (last,)
        ).rowcount:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs_v1', ?)", (last,))
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'processed_total'",
            (int(meta.get("processed_total", 0)),),
        )
    table.close()
    return RecoverReport(damaged_moved_to=aside, jobs_salvaged=len(jobs),
                         dead_salvaged=len(dead), unreadable_ranges=unreadable,
                         next_seq=last + 1)


def _salvage_rows(
    conn: sqlite3.Connection, table: str, key: str, columns: str
) -> tuple[list[tuple[Any, ...]], list[tuple[int, int]]]:
    """Every readable row of `table` in key order; unreadable key ranges are skipped."""
    try:
        return conn.execute(f"SELECT {columns} FROM {table} ORDER BY {key}").fetchall(), []
    except sqlite3.Error:
        pass
    try:
        (low, high) = conn.execute(f"SELECT min({key}), max({key}) FROM {table}").fetchone()
    except sqlite3.Error:
        low, high = None, None
    if low is None or high is None:
        # The index itself is unreadable: walk the rowids blindly up to a plausible bound.
        low, high = 1, 10_000_000
    rows: list[tuple[Any, ...]] = []
    unreadable: list[tuple[int, int]] = []
    stack = [(int(low), int(high))]
    while stack:
        a, b = stack.pop()
        try:
            rows += conn.execute(
                f"SELECT {columns} FROM {table} WHERE {key} BETWEEN ? AND ? ORDER BY {key}",
                (a, b),
            ).fetchall()
        except sqlite3.Error:
            if a == b:
                unreadable.append((a, b))
            else:
                mid = (a + b) // 2
                stack += [(mid + 1, b), (a, mid)]
    rows.sort(key=lambda r: int(r[0]))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(unreadable):
        if merged and merged[-1][1] + 1 == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return rows, merged


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


@functools.lru_cache(maxsize=32)
def _multi_row(insert: str, rows: int) -> str:
    """`insert` (ending in one VALUES tuple) extended to `rows` tuples."""
    return insert + ", (?, ?, ?, ?, ?)" * (rows - 1)


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
        # Group commit.
        self._puts: list[_Put] = []
        self._queued_events = 0  # events in self._puts, not yet committed
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        # Sequence bookkeeping (all on the loop).
        self._next_seq = 1  # next seq to assign
        self._rows = 0  # rows in the job table (pending + acked-but-not-flushed)
        self._dead = 0
        self._processed_flushed = 0
        self._done_upto = 0  # every job <= this is acknowledged or dead (but see _extra)
        self._flushed_upto = 0  # acknowledgements <= this are committed or being committed
        self._acks = 0  # acknowledgements not yet committed
        self._extra: list[int] = []  # acknowledged ids below _flushed_upto (put back jobs)
        self._acks_committing = 0  # acknowledgements inside a running transaction
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_requested = False
        # Hand-off to the worker.
        self._window: deque[Job] = deque()
        self._revived: deque[Job] = deque()  # dead letters put back in their old place
        self._cursor = 0  # highest seq handed to the worker (or in the window)
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
            last, first, rows, dead, processed = await loop.run_in_executor(
                self._executor, self._table.state
            )
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
        self._next_seq = last + 1
        self._done_upto = self._cursor = self._flushed_upto = (first - 1) if rows else last
        self._rows, self._dead, self._processed_flushed = rows, dead, processed
        self._open = True
        self._committer = asyncio.create_task(self._commit_loop(), name="queue-committer")
        log.info("queue_opened", path=str(self.path), pending=rows, dead=dead,
                 last_seq=last, durability=self._durability)

    async def close(self) -> None:
        """Commit what is waiting (requests and acknowledgements), then close the file."""
        if not self._open:
            return
        self._closing = True
        self._commit_wanted.set()
        if self._committer is not None:
            # The committer writes what is waiting, then returns (see _commit_loop).
            await self._committer
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
        log.info("queue_closed", pending=self._rows, processed_total=self.processed_total)

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
        acks = _Acks(after=self._flushed_upto, upto=self._done_upto, count=self._acks,
                     ids=tuple(self._extra))
        self._acks = 0
        self._extra = []
        self._flushed_upto = self._done_upto
        self._acks_committing += acks.count
        return acks

    def _acks_settled(self, acks: _Acks, *, committed: bool) -> None:
        self._acks_committing -= acks.count
        if committed:
            self._rows -= acks.count
            self._processed_flushed += acks.count
        elif not self._closing:  # the next commit retries them
            self._acks += acks.count
            self._extra.extend(acks.ids)
            self._flushed_upto = min(self._flushed_upto, acks.after)

    # -- producers -------------------------------------------------------------------------

    async def put(
        self,
        payloads: Sequence[Any],
        *,
        blobs: list[bytes] | None = None,
        source: str | None = None,
        sequence: int | None = None,
        key: str | None = None,
        received_at: float | None = None,
    ) -> Accepted:
        """Store one request's events (all or none); return once they are on disk."""
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
            blobs=blobs if blobs is not None else [orjson.dumps(p) for p in payloads],
            payloads=payloads,
            received_at=time.time() if received_at is None else received_at,
            source=source,
            sequence=sequence,
            key=key,
            future=loop.create_future(),
        )
        self._puts.append(put)
        self._queued_events += n
        self._commit_wanted.set()
        return await put.future

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        table = self._table
        assert table is not None
        while True:
            if self._closing and not self._puts and not self._acks:
                return
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            puts, self._puts = self._puts, []
            flush = self._acks and (
                self._flush_requested or self._closing or self._ack_interval == 0
                or self._acks >= _ACKS_FORCE_FLUSH
            )
            if not puts and not flush:
                continue
            started = time.perf_counter()
            # Events count against max_pending until they are settled either way.
            taken = sum(len(p.blobs) for p in puts)
            acks = self._take_acks() if flush else _Acks()
            if flush:
                self._flush_requested = False
                if self._flush_timer is not None:
                    self._flush_timer.cancel()
                    self._flush_timer = None
            try:
                results = await loop.run_in_executor(
                    self._executor, table.commit, puts, self._next_seq, acks, self._ttl_s,
                )
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the callers
                self._queued_events -= taken
                err = _translate(exc)
                log.error("queue_commit_failed", error=str(exc), requests=len(puts))
                for put in puts:
                    if not put.future.done():
                        put.future.set_exception(err)
                self._acks_settled(acks, committed=False)
                if self._acks:
                    self._schedule_flush(_RETRY_AFTER_FAILURE_S)
                continue
            self._queued_events -= taken
            self._acks_settled(acks, committed=True)
            if self.on_commit is not None and puts:
                rows = sum(r.accepted for r in results if not r.replayed)
                self.on_commit(len(puts), rows, time.perf_counter() - started)
            for put, result in zip(puts, results, strict=True):
                if not result.replayed:
                    self._committed(put, result)
                if not put.future.done():  # else the caller went away; the events are stored
                    put.future.set_result(result)

    def _committed(self, put: _Put, result: Accepted) -> None:
        """Account for newly stored jobs and hand them to the worker from memory if we can."""
        self._next_seq = result.last_seq + 1
        self._rows += result.accepted
        if put.revive is not None:
            self._dead -= 1
        # The window holds a contiguous run of seqs right after what the worker has.
        if result.first_seq == self._cursor + 1 and len(self._window) < _MEMORY_WINDOW:
            seq = result.first_seq
            for payload in put.payloads:
                self._window.append(
                    Job(seq=seq, payload=payload, received_at=put.received_at,
                        source=put.source,
                        sequence=None if put.sequence is None
                        else put.sequence + seq - result.first_seq)
                )
                seq += 1
            self._cursor = result.last_seq
        self._wakeup.set()

    # -- the consumer ------------------------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """The head job if it is already in memory (the fast path), else None."""
        if self._window or self._revived:
            job = (self._revived or self._window).popleft()
            self._in_flight = job
            return job
        return None

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
                jobs = await loop.run_in_executor(
                    self._executor, table.fetch, self._cursor, _PAGE
                )
                if self._window:  # a commit was handed over meanwhile; it comes after
                    jobs = [j for j in jobs if j.seq < self._window[0].seq]
                    self._window.extendleft(reversed(jobs))
                else:
                    self._window.extend(jobs)
                    if jobs:
                        self._cursor = max(self._cursor, jobs[-1].seq)
                if not jobs and not self._window:
                    # Nothing on disk past the cursor: everything there was dead-lettered.
                    self._cursor = self._next_seq - 1
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def ack(self, job: Job) -> None:
        """The job is done; its deletion is committed with the next commit."""
        if job.seq <= self._flushed_upto:  # a revived dead letter, below the ack range
            self._extra.append(job.seq)
        self._finish(job)
        self._acks += 1
        if self._ack_interval == 0 or self._acks >= _ACKS_FORCE_FLUSH:
            self._commit_wanted.set()
        else:
            self._schedule_flush()

    def _finish(self, job: Job) -> None:
        self._done_upto = max(self._done_upto, job.seq)
        if self._in_flight is not None and self._in_flight.seq == job.seq:
            self._in_flight = None

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(
                self._ack_interval if delay is None else delay, self._flush_due
            )

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._flush_requested = True
        self._commit_wanted.set()

    async def record_attempt(self, job: Job) -> None:
        """Persist that `job` failed `job.attempt` times, so max_attempts holds across restarts."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._table.set_attempts, job.seq, job.attempt)

    async def dead_letter(self, job: Job, error: str) -> None:
        """Move `job` to the durable dead-letter store; the line moves on."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        acks = self._take_acks()
        try:
            await loop.run_in_executor(
                self._executor, self._table.bury, job.seq, job.attempt, error, acks
            )
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)
        self._rows -= 1
        self._dead += 1
        self._finish(job)

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
        acks = self._take_acks()  # the ack range must end above the old seqs
        try:
            revived = await loop.run_in_executor(
                self._executor, self._table.revive, seqs, acks
            )
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)
        self._rows += len(revived)
        self._dead -= len(revived)
        self._revived.extend(revived)
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
                blobs=[orjson.dumps(dead.payload)], payloads=[dead.payload],
                received_at=dead.received_at, source=dead.source, sequence=dead.sequence,
                key=None, future=loop.create_future(), revive=seq,
            ))
        self._puts.extend(puts)
        self._queued_events += len(puts)
        self._commit_wanted.set()
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
        jobs = list(self._revived)[:limit]
        if self._in_flight is not None and self._in_flight.seq > self._done_upto:
            jobs.insert(0, self._in_flight)
        assert self._table is not None
        loop = asyncio.get_running_loop()
        after = max(self._done_upto, self._in_flight.seq if self._in_flight else 0)
        rest = await loop.run_in_executor(self._executor, self._table.fetch, after,
                                          max(0, limit - len(jobs)))
        return (jobs + rest)[:limit]

    async def pending_jobs(self, page: int = 1000) -> AsyncIterator[Job]:
        """Every pending job in order (for export), read from disk page by page."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        for job in list(self._revived):
            yield job
        after = self._done_upto
        while True:
            jobs = await loop.run_in_executor(self._executor, self._table.fetch, after, page)
            if not jobs:
                return
            for job in jobs:
                yield job
            after = jobs[-1].seq

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
        return self._rows - self._acks - self._acks_committing

    @property
    def last_seq(self) -> int:
        """The highest seq ever committed (0 when none)."""
        return self._next_seq - 1

    async def stats(self) -> QueueStats:
        """Numbers for /v1/queue."""
        oldest: float | None = None
        if self._in_flight is not None:
            oldest = self._in_flight.received_at
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
