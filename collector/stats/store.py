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
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from collector.errors import StartupError
from collector.jobs import Job
from collector.stats import formats, queries
from collector.stats.apply import Apply, Outcome
from collector.stats.schema import SCHEMA_VERSION, STATS_FILE, migrate, schema_version

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


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
        self.counters = StatsCounters()

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

    async def open(self) -> None:
        """Open (create, migrate) the database; read-only opens never write."""
        self._db = await self._run(_Db, self._path, self._durability, self._readonly)
        db = self._db
        self.counters.stale_skipped, self.counters.bogus_goals = await self._run(
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
        outcome = await self._run(self._require().apply, job)
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
        return await self._run(queries.matches_page, self._require().conn, limit, before)

    async def match(self, match_id: int | str) -> dict[str, Any] | None:
        """One match with its player lines and goals (by id or guid), or None."""
        return await self._run(queries.match, self._require().conn, match_id)

    async def players_page(self, *, limit: int = 20, before: tuple[int, int] | None = None
                           ) -> dict[str, Any]:
        """``{"players": [...], "next": cursor}``, most recently active first."""
        return await self._run(queries.players_page, self._require().conn, limit, before)

    async def player(self, player_id: int) -> dict[str, Any] | None:
        """A player's career totals and recent matches, or None."""
        return await self._run(queries.player, self._require().conn, player_id)


class _Db:
    """One connection, used only by the store's thread."""

    def __init__(self, path: Path, durability: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
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
