"""The queue's SQL: persist-queue's ``SQLiteBase`` with job rows, dead letters,
idempotency keys and counters. Every method runs in the queue's executor thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import structlog
from persistqueue.sqlbase import SQLiteBase

from collector.errors import (
    StorageError,
    StorageFullError,
)
from collector.jobs import Job
from collector.queue.check import refuse_damaged
from collector.queue.rows import (
    JOB_COLUMNS,
    JOBS_TABLE,
    QUEUE_FILE,
    Accepted,
    DeadJob,
    Page,
    Span,
    dead_job,
    decode_row,
    encode_group,
    row_params,
)
from collector.serialization import OrjsonSerializer

log = structlog.get_logger(__name__)

_INSERT_ROWS: Final = 64  # rows per INSERT statement at most (5 parameters each)
_DELETE_KEYS: Final = 128  # row keys per DELETE statement (padded to it)
_ROW_MAX_BYTES: Final = 1 << 20  # payload bytes per row at most (one event may exceed it)
_ROW_MAX_EVENTS: Final = 1024  # jobs per row at most
_SQLITE_FULL: Final = 13
_WAL_LIMIT_BYTES: Final = 16 * 1024 * 1024
# Storage tuning, measured with 18 KB and 1.7 MB commits (WAL, synchronous=FULL): 16 KiB
# pages need a quarter of the page and WAL-frame bookkeeping of 4 KiB pages for a large
# row (2.8x the MB/s together with the two settings below) and cost small rows nothing.
# The page size applies to new files only; an older file keeps its own.
_PAGE_SIZE: Final = 16384
_CHECKPOINT_PAGES: Final = _WAL_LIMIT_BYTES // _PAGE_SIZE  # checkpoint when the WAL is this long
_PAGE_EVENTS: Final = 2048  # jobs per page read from disk, roughly (whole rows are read)


@dataclass(slots=True)
class Put:
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
class Acks:
    """Acknowledgements to commit: rows now wholly done, and how far the head row got."""

    rows: tuple[int, ...] = ()  # row keys (last seqs) to delete
    partial: tuple[int, int] | None = None  # (row key, done_upto) of a partly done row
    count: int = 0  # acknowledged jobs (for processed_total)

    def __bool__(self) -> bool:
        return bool(self.count or self.rows or self.partial)

    @staticmethod
    def merge(batches: Sequence[Acks]) -> Acks:
        """Several batches, oldest first, as one (a row's progress only ever grows)."""
        if len(batches) == 1:
            return batches[0]
        partials = [b.partial for b in batches if b.partial is not None]
        return Acks(rows=tuple(r for b in batches for r in b.rows),
                     partial=partials[-1] if partials else None,
                     count=sum(b.count for b in batches))

@dataclass(frozen=True, slots=True)
class OpenState:
    """What open() reads from the file."""

    last_seq: int
    head_done: int | None  # done_upto of the first regular row, None when there is none
    head_first: int | None
    pending: int
    dead: int
    processed: int
    revived: Page

class JobTable(SQLiteBase):
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
        "SELECT " + JOB_COLUMNS + " FROM {table_name} "
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
        #: The last run did not stop cleanly; the file passed its quick check.
        self.unclean_stop = refuse_damaged(path / QUEUE_FILE)
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

    def state(self) -> OpenState:
        """Where the line stands, read once at open."""
        conn: sqlite3.Connection = self._conn
        # persist-queue's _table_name is quoted (`jobs_v1`); sqlite_sequence holds the bare name.
        row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (JOBS_TABLE,)
        ).fetchone()
        head = conn.execute(
            f"SELECT first_seq, done_upto FROM {self._table_name} WHERE revived = 0 "
            "ORDER BY _id LIMIT 1"
        ).fetchone()
        revived = self._decode_rows(conn.execute(
            f"SELECT {JOB_COLUMNS} FROM {self._table_name} WHERE revived = 1 ORDER BY _id"
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
        return OpenState(
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

    def _apply_acks(self, conn: sqlite3.Connection, acks: Acks) -> None:
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

    def commit(self, puts: list[Put], acks: Acks, ttl_s: float
               ) -> tuple[list[Accepted], list[Span]]:
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
                rows.append(row_params(row_first, next_seq - 1, row_events, row_ts))
                row_events, row_first, row_bytes, row_size = [], next_seq, 0, 0
            if not row_events:
                row_ts = put.received_at
            row_events.append(encode_group(put.received_at, put.source, put.sequence,
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
            rows.append(row_params(row_first, next_seq - 1, row_events, row_ts))
        if not acks and not revived and not keys and len(rows) <= _INSERT_ROWS:
            # The common case: fresh events only. One INSERT in autocommit mode is one
            # transaction and one statement, whether it writes one row or several.
            if rows:
                self._insert(conn, rows)
            self.next_seq = next_seq
            return results, [Span(r[1], r[0]) for r in rows]
        durable = bool(puts)
        if not durable and self._durability == "full":
            # An acknowledgement need not be fsynced: losing one only replays a job, and
            # the next fsynced commit makes every earlier WAL frame durable anyway.
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction(conn):
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
        return results, [Span(r[1], r[0]) for r in rows]

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

    def fetch(self, after: int, limit_rows: int) -> Page:
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

    def _decode_rows(self, cursor: sqlite3.Cursor, *, max_jobs: int | None = None) -> Page:
        """Decode job rows in order; rows that cannot be decoded are set aside (after the
        read cursor is closed, so no write happens under an open statement)."""
        page = Page([], [])
        damaged: list[tuple[tuple[Any, ...], Exception]] = []
        for row in cursor:
            if max_jobs is not None and len(page.jobs) >= max_jobs:
                break
            try:
                jobs, span = decode_row(row)
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
        with transaction(conn):
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

    def set_attempts(self, key: int, seq: int, attempts: int, acks: Acks) -> None:
        """Job `seq` (in row `key`) failed `attempts` times; the jobs before it are done.

        The acknowledgements not yet committed go in the same transaction: the row's
        progress must never reach the disk ahead of the acknowledgements before it (a
        replay after a crash is one run from the oldest unacknowledged job).
        """
        conn: sqlite3.Connection = self._conn
        with transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            conn.execute(
                f"UPDATE {self._table_name} SET attempts = ?, done_upto = ? WHERE _id = ?",
                (attempts, seq - 1, key),
            )

    def bury(self, job: Job, key: int, error: str, acks: Acks) -> None:
        """Move `job` (in row `key`) to the dead letters (and flush earlier acknowledgements)."""
        conn: sqlite3.Connection = self._conn
        with transaction(conn):
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
        return [dead_job(r) for r in rows]

    def dead_one(self, seq: int) -> DeadJob | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(
            "SELECT seq, data, timestamp, source, sequence, attempts, error, failed_at "
            "FROM dead_letters WHERE seq = ?",
            (seq,),
        ).fetchone()
        return None if row is None else dead_job(row)

    def purge_keys(self, older_than: float) -> int:
        conn: sqlite3.Connection = self._conn
        cur = conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (older_than,))
        return cur.rowcount

    def revive(self, seqs: Sequence[int], acks: Acks) -> list[Job]:
        """Move dead letters back into the job table under their old seqs, first in line."""
        conn: sqlite3.Connection = self._conn
        revived: list[Job] = []
        with transaction(conn):
            if acks:
                self._apply_acks(conn, acks)
            for seq in sorted(set(seqs)):
                row = conn.execute(
                    "SELECT data, timestamp, source, sequence FROM dead_letters WHERE seq = ?",
                    (seq,),
                ).fetchone()
                if row is None:
                    continue
                group = encode_group(row[1], row[2], row[3], b"[" + row[0] + b"]")
                conn.execute(
                    f"INSERT INTO {self._table_name} ({JOB_COLUMNS}) "
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
        with transaction(conn):
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

@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def translate_error(exc: BaseException) -> Exception:
    if isinstance(exc, sqlite3.Error):
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return StorageFullError(str(exc))
        return StorageError(str(exc))
    if isinstance(exc, Exception):
        return exc
    return StorageError(repr(exc))
