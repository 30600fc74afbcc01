"""The bridge's durable spool: the only bridge module that touches persist-queue and SQLite.

Every batch the bridge closes is written here before it is sent, and removed only when
the collector has taken it (or refused it for good, which moves it to the dead letters
in the same transaction). So the bridge can be stopped, killed or left without its
collector for hours and resume where it was: the oldest batch first, with its original
source, sequence and Idempotency-Key.

* Storage is persist-queue's ``SQLiteBase`` with our own SQL (file ``spool.db`` in the
  spool dir, WAL, ``synchronous=FULL`` checked at open): one row per batch, keyed by an
  AUTOINCREMENT ``_id`` that gives the order. A settled row is deleted, never marked, so
  reading the head stays one index seek however much went through before. Table names
  are constants; nothing a client sends reaches SQL text.
* A batch is stored as the request body it will be sent as: its events as NDJSON,
  gzip-compressed (the test recording shrinks about twentyfold in batches of 15
  messages, a quarter second of play), and the body goes out with
  ``Content-Encoding: gzip`` unchanged. Nothing is pickled; the serializer handed to
  persist-queue is JSON.
* Every SQLite call, and the compression, runs in one executor thread owned by this
  module, never on the event loop.
* One bridge per spool dir: a lock file is held while the spool is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from persistqueue.sqlbase import SQLiteBase

from collector.errors import StartupError
from collector.files import exclusive_lock
from collector.serialization import OrjsonSerializer

log = structlog.get_logger(__name__)

SPOOL_FILE: Final = "spool.db"
LOCK_FILE: Final = "bridge.lock"
_GZIP_LEVEL: Final = 6


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one source, numbered from `sequence` on, sent as one request."""

    source: str
    sequence: int
    events: tuple[bytes, ...]  # each one JSON object on one line

    @property
    def key(self) -> str:
        """Idempotency-Key: the same batch always gets the same key, no two batches share one."""
        return f"{self.source}:{self.sequence}+{len(self.events)}"

    @property
    def last_sequence(self) -> int:
        """The number of the batch's last event."""
        return self.sequence + len(self.events) - 1

    def encode(self) -> bytes:
        """The request body: NDJSON, gzip-compressed (deterministic: no timestamp inside)."""
        ndjson = b"".join(event + b"\n" for event in self.events)
        return gzip.compress(ndjson, compresslevel=_GZIP_LEVEL, mtime=0)

    @classmethod
    def decode(cls, source: str, sequence: int, body: bytes) -> Batch:
        """The batch whose request body is `body`."""
        lines = gzip.decompress(body).split(b"\n")
        return cls(source, sequence, tuple(line for line in lines if line))

    def halves(self) -> tuple[Batch, Batch]:
        """The first and second half (a batch of two or more events)."""
        if len(self.events) < 2:
            raise ValueError("a single event cannot be split")
        middle = len(self.events) // 2
        return (Batch(self.source, self.sequence, self.events[:middle]),
                Batch(self.source, self.sequence + middle, self.events[middle:]))


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """A batch read back from the spool, with its row id and stored body."""

    id: int
    batch: Batch
    body: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A batch (or part of one) the collector refused for good, set aside."""

    batch: Batch
    status: int
    detail: str
    failed_at: float


class _SpoolTable(SQLiteBase):
    """persist-queue's SQLite base with the batch table and the dead letters."""

    _TABLE_NAME = "batches"
    _KEY_COLUMN = "_id"
    _SQL_CREATE = (
        "CREATE TABLE IF NOT EXISTS {table_name} ("
        "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, "
        "sequence INTEGER NOT NULL, count INTEGER NOT NULL, body BLOB NOT NULL, "
        "created_at FLOAT NOT NULL)"
    )
    _SQL_INSERT = (
        "INSERT INTO {table_name} (source, sequence, count, body, created_at) "
        "VALUES (?, ?, ?, ?, ?)"
    )
    _SQL_SELECT = (
        "SELECT {key_column}, source, sequence, body, created_at FROM {table_name} "
        "ORDER BY {key_column} LIMIT 1"
    )
    _SQL_DELETE = "DELETE FROM {table_name} WHERE {key_column} = ?"

    def __init__(self, path: Path, *, durability: Literal["full", "normal"]) -> None:
        self._durability = durability
        super().__init__(str(path), name="v1", serializer=OrjsonSerializer,
                         db_file_name=SPOOL_FILE, timeout=30.0)

    def _init(self) -> None:
        super()._init()
        conn: sqlite3.Connection = self._conn
        conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters ("
            "key TEXT PRIMARY KEY, source TEXT NOT NULL, sequence INTEGER NOT NULL, "
            "count INTEGER NOT NULL, body BLOB NOT NULL, status INTEGER NOT NULL, "
            "detail TEXT NOT NULL, failed_at FLOAT NOT NULL)"
        )
        conn.execute("PRAGMA synchronous=" + self._durability.upper())
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        (sync,) = conn.execute("PRAGMA synchronous").fetchone()
        expected = 2 if self._durability == "full" else 1
        if mode.lower() != "wal" or sync != expected:
            raise StartupError(
                f"{self.path}/{SPOOL_FILE}: journal_mode={mode} synchronous={sync}, "
                f"cannot guarantee durability={self._durability}"
            )

    # -- everything below runs in the spool's executor thread ----------------------------

    def counts(self) -> tuple[int, int, int]:
        """(batches waiting, events waiting, dead letters)."""
        conn: sqlite3.Connection = self._conn
        batches, events = conn.execute(
            f"SELECT count(*), coalesce(sum(count), 0) FROM {self._table_name}"  # noqa: S608
        ).fetchone()
        (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        return batches, events, dead

    def insert(self, batch: Batch, created_at: float) -> None:
        conn: sqlite3.Connection = self._conn
        conn.execute(self._sql_insert, (batch.source, batch.sequence, len(batch.events),
                                        batch.encode(), created_at))

    def head(self) -> SpooledBatch | None:
        conn: sqlite3.Connection = self._conn
        row = conn.execute(self._sql_select(0)).fetchone()
        if row is None:
            return None
        rowid, source, sequence, body, created_at = row
        return SpooledBatch(id=rowid, batch=Batch.decode(source, sequence, body), body=body,
                            created_at=created_at)

    def settle(self, rowid: int, dead: Sequence[DeadLetter]) -> None:
        """Delete the row; store its refused parts in the same transaction."""
        conn: sqlite3.Connection = self._conn
        sql_delete = self._SQL_DELETE.format(table_name=self._table_name,
                                             key_column=self._key_column)
        if not dead:
            conn.execute(sql_delete, (rowid,))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for letter in dead:
                b = letter.batch
                # OR IGNORE: after a crash between the two, the part is refused again.
                conn.execute(
                    "INSERT OR IGNORE INTO dead_letters (key, source, sequence, count, body, "
                    "status, detail, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (b.key, b.source, b.sequence, len(b.events), b.encode(), letter.status,
                     letter.detail, letter.failed_at),
                )
            conn.execute(sql_delete, (rowid,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def dead(self, limit: int) -> list[DeadLetter]:
        conn: sqlite3.Connection = self._conn
        rows = conn.execute(
            "SELECT source, sequence, body, status, detail, failed_at FROM dead_letters "
            "ORDER BY failed_at, source, sequence LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(batch=Batch.decode(r[0], r[1], r[2]), status=r[3], detail=r[4],
                           failed_at=r[5]) for r in rows]

    def checkpoint(self) -> None:
        conn: sqlite3.Connection = self._conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection in its own thread, so that __del__ has nothing left to do."""
        super().close()
        self._getter = self._putter = None


def default_spool_dir() -> Path:
    """%LOCALAPPDATA%\\collector-bridge on Windows, else $XDG_STATE_HOME or ~/.local/state."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        if base:
            return Path(base) / "collector-bridge"
        return Path.home() / "AppData" / "Local" / "collector-bridge"
    state = os.environ.get("XDG_STATE_HOME")
    if state:
        return Path(state) / "collector-bridge"
    return Path.home() / ".local" / "state" / "collector-bridge"


def _lock(directory: Path) -> contextlib.ExitStack:
    """Take the spool dir's lock file (one bridge per spool), or raise StartupError."""
    held = contextlib.ExitStack()
    held.enter_context(exclusive_lock(directory, LOCK_FILE, what="spool dir",
                                      holder="another bridge"))
    return held


class Spool:
    """Durable FIFO of outgoing batches; every SQLite call runs in its own thread."""

    def __init__(self, directory: Path, *,
                 durability: Literal["full", "normal"] = "full") -> None:
        self._dir = directory
        self._durability: Literal["full", "normal"] = durability
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-spool")
        self._table: _SpoolTable | None = None
        self._lock: contextlib.ExitStack | None = None
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()
        self._batches = 0
        self._events = 0
        self._dead = 0

    @property
    def path(self) -> Path:
        """The spool's SQLite file."""
        return self._dir / SPOOL_FILE

    @property
    def pending_batches(self) -> int:
        """Batches stored and not yet taken by the collector."""
        return self._batches

    @property
    def pending_events(self) -> int:
        """Events in those batches."""
        return self._events

    @property
    def dead(self) -> int:
        """Batches (or parts) set aside in the dead letters."""
        return self._dead

    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        """Lock the spool dir, open (or create) the file, count what a previous run left."""
        self._lock = await self._call(_lock, self._dir)
        try:
            self._table = await self._call(
                lambda: _SpoolTable(self._dir, durability=self._durability)
            )
            self._batches, self._events, self._dead = await self._call(self._table.counts)
            if not self._batches:
                self._empty.set()
        except sqlite3.Error as exc:
            await self._release()
            raise StartupError(f"spool {self.path}: {exc}") from None
        except BaseException:
            await self._release()
            raise
        log.info("spool_opened", path=str(self.path), batches=self._batches,
                 events=self._events, dead=self._dead)

    async def close(self) -> None:
        """Checkpoint and close the file, release the lock."""
        table = self._table
        if table is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._call(table.checkpoint)
            await self._call(table.close)
            self._table = None
            log.info("spool_closed", batches=self._batches, events=self._events,
                     dead=self._dead)
        await self._release()
        self._executor.shutdown(wait=True)

    async def _release(self) -> None:
        if self._lock is not None:
            await self._call(self._lock.close)
            self._lock = None

    def _opened(self) -> _SpoolTable:
        if self._table is None:
            raise RuntimeError("the spool is not open")
        return self._table

    async def put(self, batch: Batch) -> None:
        """Store `batch` at the tail; returns once it is committed."""
        if not batch.events:
            raise ValueError("an empty batch")
        await self._call(self._opened().insert, batch, time.time())
        self._batches += 1
        self._events += len(batch.events)
        self._empty.clear()
        self._wakeup.set()

    async def next_batch(self) -> SpooledBatch:
        """Wait for and return the oldest batch (it stays stored until settled)."""
        table = self._opened()
        while True:
            if self._batches > 0:
                item: SpooledBatch | None = await self._call(table.head)
                if item is not None:
                    return item
                self._batches = self._events = 0  # the counters had drifted
                self._empty.set()
            self._wakeup.clear()
            await self._wakeup.wait()

    async def settle(self, item: SpooledBatch, dead: Sequence[DeadLetter] = ()) -> None:
        """The collector took `item` (and refused the `dead` parts of it): remove it."""
        await self._call(self._opened().settle, item.id, list(dead))
        self._batches -= 1
        self._events -= len(item.batch.events)
        self._dead += len(dead)
        if self._batches <= 0:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once every stored batch has been settled."""
        while self._batches > 0:
            await self._empty.wait()

    async def dead_letters(self, *, limit: int = 10_000) -> list[DeadLetter]:
        """The batches set aside, oldest first."""
        letters: list[DeadLetter] = await self._call(self._opened().dead, limit)
        return letters
