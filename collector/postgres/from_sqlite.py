"""`collector migrate`: a stopped SQLite-mode data dir into an empty PostgreSQL database.

What is copied, in ONE PostgreSQL transaction (all or nothing):

* the queue's pending jobs (queue.db), each under its own seq, with its payload, arrival
  time, X-Source/X-Sequence and failed attempts; dead letters put back in their old
  place stay revived (they run first);
* the dead letters with their last error;
* the Idempotency-Keys still retained (as the log stores them: their SHA-256);
* every table of stats.db into the PostgreSQL table of the same name.

Then the log's sequence is set above every seq the old files know (the queue's highest
seq ever handed out, and the seqs the statistics remember: a new event under an old seq
would be taken by the stats store for a replay), the apply mark just below the first
pending job, `processed_total` to the queue's, and the identity sequences of the copied
tables above their highest id.

It refuses, before writing anything, when the database already holds log rows or
statistics (it never merges), when a collector node runs on it (the leader's lock is
held), or when stats.db is not at the schema version this program reads. The SQLite
files are read through read-only connections, in a thread of this module's own (never
on the event loop), and never changed. The caller holds the data dir's lock.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from collector.config import mask_dsn
from collector.errors import StartupError
from collector.postgres.db import CONNECTION_ERRORS, Connection, PostgresError, connect
from collector.postgres.log import key_digest
from collector.postgres.schema import APPEND_LOCK, LEADER_LOCK, LOCK_SPACE, migrate
from collector.postgres.stats import migrate_stats
from collector.queue.check import connect_read_only, give_back
from collector.queue.rows import (
    DEAD_COLUMNS,
    JOB_COLUMNS,
    JOBS_TABLE,
    KEY_COLUMNS,
    QUEUE_FILE,
    decode_row,
)

_T = TypeVar("_T")

#: collector.stats.schema.STATS_FILE (a layer above this package).
STATS_FILE: Final = "stats.db"
#: Rows per read and per INSERT at most, and roughly the bytes (a queue row holds up to
#: 1,024 events, a match's engine state some kB).
_PAGE_ROWS: Final = 2000
_PAGE_BYTES: Final = 8 << 20
#: stats.db's own bookkeeping, not copied (PostgreSQL keeps its versions in
#: schema_versions).
_NOT_COPIED: Final = frozenset({"schema_version"})
#: Tables the statistics' migration fills with a starting row, and what such a row looks
#: like: a database holding only these is empty.
_SEEDS: Final[dict[str, str]] = {"applied": "last_seq = 0", "counters": "value = 0"}
#: Columns of the statistics that hold seqs of the log: new seqs must start above them.
_SEQ_COLUMNS: Final = (("applied", "last_seq"), ("goals", "seq"), ("matches", "opened_seq"),
                       ("match_players", "updated_seq"), ("players", "last_seq"))
#: What an unreachable database, a refused login or a server error raises.
_DB_ERRORS: Final[tuple[type[BaseException], ...]] = (*CONNECTION_ERRORS, PostgresError)
#: And what a DSN asyncpg cannot parse raises, at connect.
_CONNECT_ERRORS: Final[tuple[type[BaseException], ...]] = (*_DB_ERRORS, ValueError)
_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]*$")
_INTEGERS: Final = frozenset({"bigint", "integer", "smallint"})
_FLOATS: Final = frozenset({"double precision", "real", "numeric"})


@dataclass(frozen=True, slots=True)
class MigrateReport:
    """What `collector migrate` copied."""

    jobs: int
    first_seq: int | None  # of the pending jobs
    last_seq: int | None
    dead: int
    keys: int
    matches: int
    players: int
    stats_rows: int  # rows of every statistics table together
    next_seq: int  # the seq the next event gets
    applied_seq: int
    processed_total: int


@dataclass(frozen=True, slots=True)
class _Table:
    """A table of stats.db: its name and columns, in the file's order."""

    name: str
    columns: tuple[str, ...]


@dataclass(slots=True)
class _Counts:
    jobs: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_regular: int | None = None  # the lowest seq of a pending job not revived
    highest: int = 0  # the highest seq seen anywhere
    dead: int = 0
    keys: int = 0


class _Files:
    """Read-only connections to queue.db and stats.db, used only by one thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-migrate")
        self.queue: sqlite3.Connection | None = None
        self.stats: sqlite3.Connection | None = None
        self._created: list[tuple[Path, list[str]]] = []  # (file, -wal/-shm it had not)
        self._cursors: dict[str, sqlite3.Cursor] = {}

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """`func(*args)` in the files' thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- in the thread --------------------------------------------------------------------

    def open(self) -> None:
        for name in (QUEUE_FILE, STATS_FILE):
            path = self.data_dir / name
            if not path.exists():
                continue
            before = [s for s in ("-wal", "-shm") if not Path(f"{path}{s}").exists()]
            self._created.append((path, before))
            try:
                conn = connect_read_only(path)
            except sqlite3.Error as exc:
                raise StartupError(f"{path}: cannot be read ({exc})") from None
            if name == QUEUE_FILE:
                self.queue = conn
            else:
                self.stats = conn

    def shutdown(self) -> None:
        """Stop the thread (on the loop's side, after the last `run`)."""
        self._executor.shutdown(wait=True)

    def close(self) -> None:
        for conn in (self.queue, self.stats):
            if conn is not None:
                conn.close()
        self.queue = self.stats = None
        for path, suffixes in self._created:
            give_back(path, suffixes)

    def read(self, conn: sqlite3.Connection, label: str, sql: str) -> list[tuple[Any, ...]]:
        """The next rows of the query `sql` (opened once under `label`): at most
        _PAGE_ROWS rows or about _PAGE_BYTES; [] at its end."""
        cursor = self._cursors.get(label)
        if cursor is None:
            cursor = self._cursors[label] = conn.execute(sql)
        rows: list[tuple[Any, ...]] = []
        size = 0
        while len(rows) < _PAGE_ROWS and size < _PAGE_BYTES:
            row = cursor.fetchone()
            if row is None:
                break
            rows.append(row)
            size += sum(len(v) for v in row if isinstance(v, str | bytes))
        return rows

    def queue_numbers(self) -> tuple[int, int]:
        """The queue's highest seq ever handed out, and its processed_total."""
        if self.queue is None:
            return 0, 0
        row = self.queue.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (JOBS_TABLE,)).fetchone()
        processed = self.queue.execute(
            "SELECT value FROM meta WHERE key = 'processed_total'").fetchone()
        return (int(row[0]) if row else 0), (int(processed[0]) if processed else 0)

    def stats_version(self) -> int:
        assert self.stats is not None
        found = self.stats.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                   "AND name = 'schema_version'").fetchone()
        if found is None:
            return 0
        (version,) = self.stats.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(version or 0)

    def stats_tables(self) -> list[_Table]:
        """stats.db's tables in the order they were created (a referenced table first)."""
        assert self.stats is not None
        names = [name for (name,) in self.stats.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY rowid")]
        tables = []
        for name in names:
            if name in _NOT_COPIED:
                continue
            if not _NAME.match(name):
                raise StartupError(f"stats.db holds a table {name!r} that this program does "
                                   "not know: it was changed by hand; nothing was copied")
            columns = tuple(r[1] for r in self.stats.execute(f"PRAGMA table_info({name})"))
            if not all(_NAME.match(c) for c in columns):
                raise StartupError(f"stats.db: table {name} has a column this program does "
                                   "not know: it was changed by hand; nothing was copied")
            tables.append(_Table(name, columns))
        return tables

    def stats_autoincrement(self) -> dict[str, int]:
        """AUTOINCREMENT's high-water mark per table: ids never to be handed out again."""
        if self.stats is None:
            return {}
        try:
            return {name: int(seq) for name, seq in self.stats.execute(
                "SELECT name, seq FROM sqlite_sequence")}
        except sqlite3.OperationalError:  # no AUTOINCREMENT table: no sqlite_sequence
            return {}

    def stats_highest_seq(self, tables: Sequence[_Table]) -> int:
        """The highest log seq the statistics remember."""
        assert self.stats is not None
        known = {t.name: t.columns for t in tables}
        highest = 0
        for table, column in _SEQ_COLUMNS:
            if column in known.get(table, ()):
                (value,) = self.stats.execute(
                    f"SELECT max({column}) FROM {table}").fetchone()  # noqa: S608 - checked names
                if isinstance(value, int):
                    highest = max(highest, value)
        return highest


def _pending_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Log rows (seq, payload, received_at, source, sequence, attempts, revived) of the
    jobs still to do in queue rows, as the worker would have taken them."""
    out: list[tuple[Any, ...]] = []
    for row in rows:
        jobs, _span = decode_row(row)
        revived = bool(row[6])
        out.extend((job.seq, orjson.dumps(job.payload), float(job.received_at), job.source,
                    job.sequence, job.attempt - 1, revived) for job in jobs)
    return out


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def _convert(value: Any, pg_type: str, where: str) -> Any:
    """A value of stats.db as the PostgreSQL column of `pg_type` takes it."""
    if value is None:
        return None
    if pg_type in _INTEGERS:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
    elif pg_type in _FLOATS:
        if isinstance(value, int | float):
            return float(value)
    elif pg_type == "boolean":
        if isinstance(value, int):
            return bool(value)
    elif pg_type == "bytea":
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
    elif isinstance(value, str):  # text, varchar, json
        return value
    raise StartupError(f"stats.db: {where} holds {value!r}, which does not fit PostgreSQL's "
                       f"{pg_type}; nothing was copied")


class _Copy:
    """The copy itself, on one PostgreSQL connection inside one transaction."""

    def __init__(self, conn: Connection, files: _Files, *, key_ttl_s: float) -> None:
        self._conn = conn
        self._files = files
        self._key_ttl_s = key_ttl_s
        self.counts = _Counts()

    async def refuse_in_use(self, tables: Sequence[_Table]) -> None:
        """A one-line StartupError when a node runs on the database or it holds data."""
        conn = self._conn
        if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()))",
                LOCK_SPACE, LEADER_LOCK):
            raise StartupError("a collector node runs on this PostgreSQL database (it holds "
                               "the leader's lock): stop every node first; nothing was copied")
        used = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM log) OR EXISTS (SELECT 1 FROM log_dead) "
            "OR EXISTS (SELECT 1 FROM log_keys) OR (SELECT is_called FROM log_seq) "
            "OR (SELECT applied_seq <> 0 OR processed_total <> 0 FROM log_state WHERE id = 1)")
        if used:
            raise StartupError("the PostgreSQL database already holds events (log rows, "
                               "dead letters or a used sequence): collector migrate copies "
                               "only into an empty one and never merges; nothing was copied")
        for table in tables:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{table.name}"'):
                continue  # the copy says so
            seed = _SEEDS.get(table.name)
            where = f" WHERE NOT ({seed})" if seed else ""
            if await conn.fetchval(
                    f'SELECT EXISTS (SELECT 1 FROM "{table.name}"{where})'):  # noqa: S608
                raise StartupError(
                    f"the PostgreSQL database already holds statistics (table {table.name} "
                    "is not empty): collector migrate copies only into an empty one and "
                    "never merges; nothing was copied")

    async def jobs(self) -> None:
        files, c = self._files, self.counts
        if files.queue is None:
            return
        sql = f"SELECT {JOB_COLUMNS} FROM {JOBS_TABLE} ORDER BY _id"  # noqa: S608
        while True:
            try:
                rows = await files.run(_read_jobs, files, sql)
            except (ValueError, TypeError, sqlite3.Error) as exc:
                raise StartupError(
                    f"{files.data_dir / QUEUE_FILE}: a job row cannot be read ({exc}): run "
                    "`collector check --full` and `collector recover` first; nothing was "
                    "copied") from None
            if not rows:
                return
            await self._conn.execute(
                "INSERT INTO log (seq, payload, received_at, source, sequence, attempts, "
                "revived) SELECT * FROM unnest($1::bigint[], $2::bytea[], "
                "$3::double precision[], $4::text[], $5::bigint[], $6::integer[], "
                "$7::boolean[])", *_columns(rows, 7))
            seqs = [r[0] for r in rows]
            regular = [r[0] for r in rows if not r[6]]
            c.jobs += len(rows)
            c.first_seq = min(seqs + ([c.first_seq] if c.first_seq is not None else []))
            c.last_seq = max(seqs + ([c.last_seq] if c.last_seq is not None else []))
            if regular:
                c.first_regular = min(regular + ([c.first_regular] if c.first_regular
                                                 is not None else []))
            c.highest = max(c.highest, c.last_seq)

    async def dead(self) -> None:
        files, c = self._files, self.counts
        if files.queue is None:
            return
        sql = f"SELECT {DEAD_COLUMNS} FROM dead_letters ORDER BY seq"  # noqa: S608
        while rows := await files.run(files.read, files.queue, "dead", sql):
            await self._conn.execute(
                "INSERT INTO log_dead (seq, payload, received_at, source, sequence, "
                "attempts, error, failed_at) SELECT * FROM unnest($1::bigint[], $2::bytea[], "
                "$3::double precision[], $4::text[], $5::bigint[], $6::integer[], $7::text[], "
                "$8::double precision[])",
                *_columns([(r[0], bytes(r[1]), float(r[2]), r[3], r[4], r[5], r[6], float(r[7]))
                           for r in rows], 8))
            c.dead += len(rows)
            c.highest = max(c.highest, rows[-1][0])

    async def keys(self) -> None:
        """The Idempotency-Keys younger than the retention, by their SHA-256."""
        files, c = self._files, self.counts
        if files.queue is None:
            return
        since = time.time() - self._key_ttl_s
        sql = f"SELECT {KEY_COLUMNS} FROM idempotency_keys ORDER BY key"  # noqa: S608
        while rows := await files.run(files.read, files.queue, "keys", sql):
            kept = [(key_digest(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows
                    if r[4] > since]
            if kept:
                await self._conn.execute(
                    "INSERT INTO log_keys (digest, first_seq, last_seq, accepted, created_at) "
                    "SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], "
                    "$4::integer[], $5::double precision[])", *_columns(kept, 5))
            c.keys += len(kept)
            c.highest = max([c.highest, *(r[2] for r in rows)])

    async def stats_table(self, table: _Table) -> int:
        """Copy one table of stats.db; returns its rows."""
        conn, files = self._conn, self._files
        assert files.stats is not None
        types = {r["attname"]: r["type"] for r in await conn.fetch(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
            "FROM pg_attribute AS a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 "
            "AND NOT a.attisdropped", f'"{table.name}"')}
        if not types:
            raise StartupError(f"PostgreSQL has no statistics table {table.name}, which "
                               "stats.db has: the two schemas differ; nothing was copied")
        missing = [c for c in table.columns if c not in types]
        if missing:
            raise StartupError(f"PostgreSQL's table {table.name} has no column "
                               f"{', '.join(missing)}, which stats.db has: the two schemas "
                               "differ; nothing was copied")
        if table.name in _SEEDS:  # only the migration's starting rows (refuse_in_use)
            await conn.execute(f'DELETE FROM "{table.name}"')  # noqa: S608
        names = ", ".join(f'"{c}"' for c in table.columns)
        arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(table.columns, start=1))
        insert = f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays})'  # noqa: S608
        select = f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY rowid"  # noqa: S608
        copied = 0
        while rows := await files.run(files.read, files.stats, f"stats {table.name}", select):
            values = [[_convert(row[i], types[c], f"{table.name}.{c}") for row in rows]
                      for i, c in enumerate(table.columns)]
            await conn.execute(insert, *values)
            copied += len(rows)
        return copied

    async def reset_identities(self, table: _Table, autoincrement: int) -> None:
        """Identity sequences above the highest id copied (and every id SQLite's
        AUTOINCREMENT ever handed out), so that new rows do not collide."""
        conn = self._conn
        for row in await conn.fetch(
                "SELECT a.attname FROM pg_attribute AS a WHERE a.attrelid = to_regclass($1) "
                "AND a.attidentity <> '' AND NOT a.attisdropped", f'"{table.name}"'):
            column = row["attname"]
            highest = await conn.fetchval(
                f'SELECT max("{column}") FROM "{table.name}"')  # noqa: S608
            value = max(int(highest or 0), autoincrement)
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence($1, $2), $3, $4)",
                f'"{table.name}"', column, max(value, 1), value > 0)


def _read_jobs(files: _Files, sql: str) -> list[tuple[Any, ...]]:
    assert files.queue is not None
    return _pending_rows(files.read(files.queue, "jobs", sql))


async def migrate_data_dir(conn: Connection, data_dir: Path, *, stats_version: int,
                           key_ttl_s: float) -> MigrateReport:
    """Copy the stopped SQLite-mode data dir `data_dir` into the database of `conn`
    (migrated here first), in one transaction; `stats_version`: the version of stats.db
    this program reads. A one-line StartupError when refused; nothing is then written."""
    await migrate(conn)
    await migrate_stats(conn)
    files = _Files(data_dir)
    try:
        await files.run(files.open)
        tables: list[_Table] = []
        highest_stats = 0
        if files.stats is not None:
            version = await files.run(files.stats_version)
            if version != stats_version:
                newer = version > stats_version
                raise StartupError(
                    f"{data_dir / STATS_FILE} is at schema version {version}, this program "
                    f"copies version {stats_version}: "
                    + ("upgrade collector" if newer else
                       f"start the daemon once in the SQLite mode (collector serve "
                       f"--data-dir {data_dir}, no DSN) so that it migrates the file, stop "
                       "it") + ", then run collector migrate again; nothing was copied")
            tables = await files.run(files.stats_tables)
            highest_stats = await files.run(files.stats_highest_seq, tables)
        autoincrement = await files.run(files.stats_autoincrement)
        queue_last, processed = await files.run(files.queue_numbers)
        copy = _Copy(conn, files, key_ttl_s=key_ttl_s)
        rows_by_table: dict[str, int] = {}
        async with conn.transaction():
            # The append lock: no node appends meanwhile, and a second migrate waits here,
            # then finds this one's rows and refuses.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, APPEND_LOCK)
            await copy.refuse_in_use(tables)
            await copy.jobs()
            await copy.dead()
            await copy.keys()
            for table in tables:
                rows_by_table[table.name] = await copy.stats_table(table)
                await copy.reset_identities(table, autoincrement.get(table.name, 0))
            c = copy.counts
            last = max(queue_last, c.highest, highest_stats)
            applied = last if c.first_regular is None else c.first_regular - 1
            if last > 0:
                await conn.execute("SELECT setval('log_seq', $1, true)", last)
            await conn.execute(
                "UPDATE log_state SET applied_seq = $1, processed_total = $2 WHERE id = 1",
                applied, processed)
        return MigrateReport(
            jobs=c.jobs, first_seq=c.first_seq, last_seq=c.last_seq, dead=c.dead,
            keys=c.keys, matches=rows_by_table.get("matches", 0),
            players=rows_by_table.get("players", 0), stats_rows=sum(rows_by_table.values()),
            next_seq=last + 1, applied_seq=applied, processed_total=processed)
    finally:
        await files.run(files.close)
        files.shutdown()


async def migrate_to(dsn: str, data_dir: Path, *, stats_version: int,
                     key_ttl_s: float) -> MigrateReport:
    """`migrate_data_dir` on a connection of its own to `dsn`; an unreachable database,
    a refused login or a server error is a one-line StartupError (the DSN's password
    masked)."""
    where = mask_dsn(dsn)
    try:
        conn = await connect(dsn)
    except _CONNECT_ERRORS as exc:
        raise StartupError(f"cannot connect to PostgreSQL at {where}: {_reason(exc)}") from None
    try:
        return await migrate_data_dir(conn, data_dir, stats_version=stats_version,
                                      key_ttl_s=key_ttl_s)
    except _DB_ERRORS as exc:
        raise StartupError(f"PostgreSQL at {where} failed during the copy, which was rolled "
                           f"back (nothing was copied): {_reason(exc)}") from None
    finally:
        try:
            await conn.close(timeout=10)
        except _DB_ERRORS:
            conn.terminate()


def _reason(exc: BaseException) -> str:
    """An error's text on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
