"""The statistics database (stats.db): the only module that touches it.

* Every SQLite call runs in one executor thread owned by :class:`StatsStore`, never on
  the event loop.
* Each job's effect is applied exactly once: the last applied ``seq`` is written in the
  same transaction as the change. A job at or below it (a replay after a crash, or a
  dead letter put back in its old place) runs as a late event: its snapshot is older
  than the stored state and is skipped; its facts are stored unless already there (a
  goal is one row per match, scorer, game time and speed, whatever seq brought it).
* Stale data never overwrites fresh data. Each feed (``X-Source``, or none) has a
  high-water mark of its own numbering (``X-Sequence`` where given, else the queue's
  ``seq``). A snapshot at or below the mark is skipped and counted; so is a match
  start, end or goal without a match id that comes late, as it could land in the wrong
  match. Facts about a named match (a goal, an end) are applied even when they arrive
  late: nothing newer supersedes them. The 2023 plugin's ``last_update_timestamp`` is
  also checked per match.
* Career totals are the sum over matches of each player's latest line in the match:
  a changed line adds its difference to the totals, in the same transaction.
* Offline matches (no match id) get ``offline:<feed>:<seq>``, ``seq`` being the job that
  opened the match. A new one starts at MatchCreated/MatchInitialized, after the
  previous one was closed (MatchDestroyed), or when a player's numbers go down (a new
  game began without any start event).
* A damaged file is refused, never changed: an open that meets SQLite's "malformed" or
  "not a database" (or, after an unclean stop, a failing quick_check) raises
  :class:`StatsDamagedError`, one line naming the file and `collector rebuild-stats`; a
  read or an apply that meets it later raises the same error (the query API answers
  503, the worker retries the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from collector.errors import StartupError
from collector.jobs import Job
from collector.stats import formats, queries, sessions
from collector.stats.apply import Apply, Outcome
from collector.stats.schema import SCHEMA_VERSION, STATS_FILE, migrate, schema_version

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
SQLITE_DAMAGED: Final = frozenset({11, 26})
#: The command that replaces a damaged stats.db (named in every refusal).
REBUILD_COMMAND: Final = "collector rebuild-stats"
Check = Literal["reads", "quick", "full"]


class StatsDamagedError(StartupError):
    """stats.db cannot be read: SQLite finds it damaged. It is left as it is."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"statistics database {path} is damaged ({problem}); nothing was changed. "
            f"With the daemon stopped, run `{REBUILD_COMMAND} --data-dir {path.parent}` "
            "to keep it aside and rebuild the statistics from the archive"
        )


def is_damage(exc: BaseException) -> bool:
    """Whether an exception is SQLite saying the file is damaged (not busy, not full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (isinstance(exc, sqlite3.DatabaseError) and isinstance(code, int)
            and code & 0xFF in SQLITE_DAMAGED)


def unclean_stop(path: Path) -> bool:
    """Whether the last writer left frames in the WAL (a crash, kill -9, power cut).

    A clean close checkpoints the WAL and truncates it (SQLite deletes it when no reader
    has the file open), so a WAL with frames means the file was not closed.
    """
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except OSError:
        return False


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: no checkpoint on close, nothing created beside the
    file when there is no WAL (then the file is opened as immutable)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)


#: What an open reads first, besides the schema (the right edge of the big tables too).
_FIRST_READS: Final = (
    ("schema_version", "SELECT max(version) FROM schema_version"),
    ("applied", "SELECT last_seq FROM applied"),
    ("counters", "SELECT name, value FROM counters"),
    ("feeds", "SELECT count(*) FROM feeds"),
    ("matches", "SELECT max(id) FROM matches"),
    ("players", "SELECT max(id) FROM players"),
)


def find_damage(path: Path, check: Check = "reads") -> list[str]:
    """What is wrong with an existing stats.db, read-only; [] when nothing was found.

    `reads`: what an open reads (the schema, the small tables, the right edge of the big
    ones). `quick`: plus SQLite's quick_check (every page, as after an unclean stop).
    `full`: plus integrity_check (indexes against tables too). Only damage counts: a
    missing table or a busy file is left to the regular open. Nothing is written, not
    even a checkpoint, so a damaged file stays byte for byte as it was.
    """
    try:
        conn = _connect_read_only(path)
    except sqlite3.Error as exc:
        return [str(exc)] if is_damage(exc) else []
    try:
        try:
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, sql in _FIRST_READS:
                if table in tables:
                    conn.execute(sql).fetchall()
            if check == "reads":
                return []
            pragma = "integrity_check" if check == "full" else "quick_check"
            found = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(20)")]
        except sqlite3.Error as exc:
            return [str(exc)] if is_damage(exc) else []
        return [] if found == ["ok"] else found
    finally:
        conn.close()


@dataclass(slots=True)
class StatsCounters:
    """What the store did since it was opened (stale/bogus totals are kept on disk)."""

    applied: int = 0
    unchanged: int = 0
    replayed: int = 0
    stale_skipped: int = 0
    bogus_goals: int = 0


class StatsStore:
    """Matches, player lines, goals and careers in stats.db; one executor thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durability: Literal["full", "normal"] = "full",
        readonly: bool = False,
    ) -> None:
        self._path = data_dir / STATS_FILE
        self._durability = durability
        self._readonly = readonly
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-stats")
        self._db: _Db | None = None
        self._damage_logged = False
        self.counters = StatsCounters()
        #: Called on the event loop after a job or a run was applied, with the ids of the
        #: matches it changed (the live feed listens here). Must be cheap; None: nobody.
        self.on_applied: Callable[[frozenset[int]], None] | None = None

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    def _require(self) -> _Db:
        if self._db is None:
            raise RuntimeError("the stats store is not open")
        return self._db

    async def _guarded(self, func: Callable[..., _T], *args: Any) -> _T:
        """`func` in the thread; SQLite's "damaged" becomes StatsDamagedError."""
        try:
            return await self._run(func, *args)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            raise self._damaged(str(exc)) from None

    def _damaged(self, problem: str) -> StatsDamagedError:
        error = StatsDamagedError(self._path, problem)
        if self._db is not None and not self._damage_logged:
            # Once, with what to do; each failing request or job says it again in its own
            # line (request_rejected, job_failed).
            self._damage_logged = True
            log.error("stats_damaged", path=str(self._path), error=problem,
                      fix=f"{REBUILD_COMMAND} --data-dir {self._path.parent}")
        return error

    async def open(self) -> None:
        """Open (create, migrate) the database; read-only opens never write.

        A damaged file raises StatsDamagedError and is left as it is: before a writable
        open, the file is read through a read-only connection (with a quick_check after
        an unclean stop).
        """
        self._db = await self._guarded(_Db, self._path, self._durability, self._readonly)
        db = self._db
        self.counters.stale_skipped, self.counters.bogus_goals = await self._guarded(
            db.stored_counters
        )
        log.info("stats_opened", path=str(self._path), schema_version=db.version,
                 last_seq=db.last_seq, readonly=self._readonly)

    async def close(self) -> None:
        """Close the database and stop the thread."""
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._executor.shutdown(wait=True)
        if db is not None and not self._readonly:
            c = self.counters
            log.info("stats_closed", applied=c.applied, unchanged=c.unchanged,
                     replayed=c.replayed, stale_skipped=c.stale_skipped,
                     bogus_goals=c.bogus_goals)

    async def apply(self, job: Job) -> Outcome:
        """Apply one job's effect (exactly once); returns what happened."""
        outcome = await self._guarded(self._require().apply, job)
        c = self.counters
        if outcome == "applied":
            c.applied += 1
        elif outcome == "unchanged":
            c.unchanged += 1
        elif outcome == "replayed":
            c.replayed += 1
        elif outcome == "stale":
            c.stale_skipped += 1
            log.debug("stats_stale_skipped", source=job.source, sequence=job.sequence)
        else:
            c.bogus_goals += 1
        return outcome

    async def matches_page(self, *, limit: int = 20, before: int | None = None
                           ) -> dict[str, Any]:
        """``{"matches": [...], "next": cursor}``, newest first."""
        return await self._guarded(queries.matches_page, self._require().conn, limit, before)

    async def match(self, match_id: int | str) -> dict[str, Any] | None:
        """One match with its player lines and goals (by id or guid), or None."""
        return await self._guarded(queries.match, self._require().conn, match_id)

    async def players_page(self, *, limit: int = 20, before: tuple[int, int] | None = None
                           ) -> dict[str, Any]:
        """``{"players": [...], "next": cursor}``, most recently active first."""
        return await self._guarded(queries.players_page, self._require().conn, limit, before)

    async def player(self, player_id: int) -> dict[str, Any] | None:
        """A player's career totals and recent matches, or None."""
        return await self._guarded(queries.player, self._require().conn, player_id)

    async def sessions_page(self, *, gap_s: float, limit: int = 20,
                            before: tuple[int, int] | None = None, player: int | None = None
                            ) -> dict[str, Any] | None:
        """``{"sessions": [...], "next": cursor}``, newest first (collector.stats.sessions);
        None when `before` names no match."""
        return await self._guarded(functools.partial(
            sessions.sessions_page, self._require().conn, gap_s=gap_s, limit=limit,
            before=before, player=player))

    async def session(self, key: tuple[int, int], *, gap_s: float) -> dict[str, Any] | None:
        """One session (player id, first match id) with its matches, or None."""
        return await self._guarded(functools.partial(
            sessions.session, self._require().conn, key, gap_s=gap_s))


class _Db:
    """One connection, used only by the store's thread."""

    def __init__(self, path: Path, durability: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        if not readonly and path.exists():
            # Read-only first: a damaged file is refused before anything may write to it
            # (a writable open of a file with a WAL checkpoints it on close).
            found = find_damage(path, "quick" if unclean_stop(path) else "reads")
            if found:
                raise StatsDamagedError(path, found[0])
        if readonly:
            if not path.exists():
                raise StartupError(f"no statistics database at {path}")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"{path.parent}: cannot create it: {exc.strerror}") from None
            conn = sqlite3.connect(path, isolation_level=None)
        self.conn = conn
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = " + ("FULL" if durability == "full"
                                                        else "NORMAL"))
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(conn, path)
            self.version = schema_version(conn)
            if self.version != SCHEMA_VERSION:
                raise StartupError(
                    f"{path}: schema version {self.version}, this program reads "
                    f"{SCHEMA_VERSION}; start the daemon once to migrate it"
                )
            (self.last_seq,) = conn.execute("SELECT last_seq FROM applied").fetchone()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        if not self.readonly:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    def stored_counters(self) -> tuple[int, int]:
        rows = dict(self.conn.execute("SELECT name, value FROM counters").fetchall())
        return int(rows.get("stale_skipped", 0)), int(rows.get("bogus_goals", 0))

    # -- applying jobs ----------------------------------------------------------------------

    def apply(self, job: Job) -> Outcome:
        # At or below the mark: a replay after a crash, or a dead letter put back in its
        # old place. It runs as a late event: its snapshot is older than the state and is
        # skipped, its facts (a goal, an end) are stored unless already there.
        revisit = job.seq <= self.last_seq
        event = formats.parse(job.payload)
        if isinstance(event, formats.Generic):
            # Nothing to store; a replay of it changes nothing either.
            return "replayed" if revisit else "unchanged"
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcome = Apply(conn, job, revisit=revisit).run(event)
            if outcome == "unchanged" or (revisit and outcome != "applied"):
                conn.execute("ROLLBACK")
                return "replayed" if revisit else outcome
            if not revisit:
                conn.execute("UPDATE applied SET last_seq = ?", (job.seq,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.last_seq = max(self.last_seq, job.seq)
        return outcome

    # -- reading ------------------------------------------------------------------------------
