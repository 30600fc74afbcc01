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
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import orjson
import structlog

from collector.errors import StartupError
from collector.jobs import Job
from collector.stats import formats, queries, sessions
from collector.stats.apply import Apply, Outcome, feed_row
from collector.stats.backend import Connection, SharedBackend, StatsUnavailableError
from collector.stats.damage import (
    REBUILD_COMMAND,
    StatsDamagedError,
    find_damage,
    is_damage,
    unclean_stop,
)
from collector.stats.derived import MatchStats, rounded
from collector.stats.schema import SCHEMA_VERSION, STATS_FILE, migrate, schema_version

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: The Generic events the derived statistics read (the scoreboard stores nothing of them).
_ENGINE_EVENTS: Final = (formats.Phase, formats.Clock, formats.Demolition)
#: Engines of open matches kept in memory between transactions (one a feed, usually).
_ENGINES_KEPT: Final = 16
#: Keys rounded to 0.1 (uu, uu/s); every other number to 0.01.


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
        shared: SharedBackend | None = None,
    ) -> None:
        self._path = data_dir / STATS_FILE
        self._durability = durability
        self._readonly = readonly
        #: The statistics live in a database other nodes share (PostgreSQL), not stats.db.
        self._shared = shared
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-stats")
        self._db: _Db | None = None
        self._damage_logged = False
        self.counters = StatsCounters()
        #: Called on the event loop after a job or a run was applied, with the ids of the
        #: matches it changed (the live feed listens here). Must be cheap; None: nobody.
        self.on_applied: Callable[[frozenset[int]], None] | None = None

    @property
    def path(self) -> Path:
        """The database file (in the SQLite mode)."""
        return self._path

    @property
    def location(self) -> str:
        """Where the statistics are: stats.db's path, or the shared database's label."""
        return str(self._path) if self._shared is None else self._shared.label

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
        except Exception as exc:
            shared = self._shared
            reason = None if shared is None else shared.unavailable(exc)
            if shared is None or reason is None:
                raise
            raise StatsUnavailableError(
                f"the statistics in {shared.label} cannot be reached: {reason}") from None

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
        if self._shared is None:
            self._db = await self._guarded(
                _Db.open_file, self._path, self._durability, self._readonly)
        else:
            self._db = await self._guarded(_Db.open_shared, self._shared, self._readonly)
        db = self._db
        self.counters.stale_skipped, self.counters.bogus_goals = await self._guarded(
            db.stored_counters
        )
        log.info("stats_opened", path=self.location, schema_version=db.version,
                 last_seq=db.last_seq, readonly=self._readonly)

    async def refresh_counters(self) -> StatsCounters:
        """The counters; in the shared mode the stored totals (stale, bogus goals) are read
        again, as the leader, another node, may have added to them."""
        db = self._db
        if self._shared is not None and db is not None:
            self.counters.stale_skipped, self.counters.bogus_goals = await self._guarded(
                db.stored_counters)
        return self.counters

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
        outcome, changed = await self._guarded(self._require().apply, job)
        self._count((job,), (outcome,))
        self._applied(changed)
        return outcome

    async def apply_run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Apply consecutive jobs in one transaction (one fsync), exactly once, all or
        nothing: if any job fails, nothing of the run is kept and the error is raised
        (the worker then applies the jobs one by one, which isolates the failing one)."""
        if not jobs:
            return []
        outcomes, changed = await self._guarded(self._require().apply_run, list(jobs))
        self._count(jobs, outcomes)
        self._applied(changed)
        return outcomes

    async def close_idle(self, idle_s: float, *, before: float | None = None) -> list[int]:
        """Close the matches with no event for `idle_s` seconds before `before` (now
        by default): end reason "idle", ended at their last event. Returns their ids."""
        cutoff = (time.time() if before is None else before) - idle_s
        closed = await self._guarded(self._require().close_idle, cutoff)
        for match_id in closed:
            log.info("match_closed_idle", match_id=match_id, idle_s=idle_s)
        self._applied(frozenset(closed))
        return closed

    def _count(self, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> None:
        c = self.counters
        for job, outcome in zip(jobs, outcomes, strict=True):
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

    def _applied(self, changed: frozenset[int]) -> None:
        """Tell the listener (the live feed) which matches changed; it must not fail us."""
        hook = self.on_applied
        if hook is None or not changed:
            return
        try:
            hook(changed)
        except Exception:
            log.exception("stats_on_applied_failed")

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
        db = self._require()
        return await self._guarded(queries.players_page, db.conn, limit, before, db.careers)

    async def player(self, player_id: int) -> dict[str, Any] | None:
        """A player's career totals and recent matches, or None."""
        db = self._require()
        return await self._guarded(queries.player, db.conn, player_id, db.careers)

    async def player_matches(self, player_id: int, *, limit: int = 20,
                             before: int | None = None) -> dict[str, Any] | None:
        """``{"matches": [...], "next": cursor}``: a player's matches, newest first (each
        as in the player's ``recent_matches``); None when there is no such player."""
        return await self._guarded(queries.player_matches_page, self._require().conn,
                                   player_id, limit, before)

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


@dataclass(slots=True)
class _Tx:
    """What one transaction did, to write back once at its end."""

    engines: dict[int, MatchStats] = field(default_factory=dict)  # read or fed
    fed: set[int] = field(default_factory=set)  # engines to write back
    closed: set[int] = field(default_factory=set)  # matches ended by it
    changed: set[int] = field(default_factory=set)  # for StatsStore.on_applied
    last_event: dict[int, float] = field(default_factory=dict)  # received_at per match
    last_seq: int = 0  # the highest seq whose effect it keeps
    write: bool = False  # whether there is anything to commit
    #: Per feed, the scoreboard its last snapshot wrote (or found already written), the
    #: match it belongs to and the feed's X-Sequence mark after it: a snapshot with the
    #: same scoreboard changes nothing in the tables (see StatsDb._same_scoreboard).
    boards: dict[str, tuple[tuple[Any, ...], int, int | None]] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)  # X-Sequence marks not written yet
    written: set[int] = field(default_factory=set)  # players whose statistics it wrote
    #: Rows it read or wrote, for the next jobs of the transaction (Apply.memo).
    memo: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)


def _scoreboard(snap: formats.Snapshot) -> tuple[Any, ...]:
    """Everything of a snapshot that the tables keep (the car states only feed the
    engine): two snapshots with the same scoreboard write the same rows. The teams are
    compared whole, their colours included: a changed colour takes the full path."""
    return (snap.format, snap.match_guid, snap.teams, snap.arena, snap.playlist,
            snap.time_seconds, snap.overtime, snap.winner, snap.replay, snap.timestamp,
            tuple((p.name, p.primary_id, p.team, p.score, p.goals, p.shots, p.assists,
                   p.saves, p.touches, p.demos) for p in snap.players))


def write_derived(conn: Connection, match_id: int, engine: MatchStats) -> list[int]:
    """The engine's state and figures into the match's rows (inside a transaction); the
    ids of the players whose statistics were written."""
    conn.execute(
        "INSERT INTO match_engine (match_id, state) VALUES (?, ?) "
        "ON CONFLICT (match_id) DO UPDATE SET state = excluded.state",
        (match_id, orjson.dumps(engine.to_state()).decode()),
    )
    conn.execute("UPDATE matches SET duration_s = ? WHERE id = ?",
                 (round(engine.duration_s, 2), match_id))
    for num, team in engine.teams().items():
        conn.execute(
            "INSERT INTO match_teams (match_id, num, possession_s) VALUES (?, ?, ?) "
            "ON CONFLICT (match_id, num) DO UPDATE SET possession_s = excluded.possession_s",
            (match_id, num, round(team["possession_s"], 2)),
        )
    ids = dict(conn.execute(
        "SELECT p.key, mp.player_id FROM match_players mp JOIN players p ON p.id = mp.player_id "
        "WHERE mp.match_id = ?",
        (match_id,),
    ).fetchall())
    cars = engine.cars()
    written = []
    for key, stats in engine.players().items():
        player_id = ids.get(key)
        if player_id is not None:
            car = cars.get(key)
            conn.execute(
                "UPDATE match_players SET stats = ?, car = ? WHERE match_id = ? "
                "AND player_id = ?",
                (orjson.dumps(rounded(stats)).decode(),
                 None if car is None else orjson.dumps(car).decode(), match_id, player_id),
            )
            written.append(player_id)
    return written


class _Db:
    """One connection, used only by the store's thread."""

    def __init__(self, conn: Connection, *, readonly: bool,
                 shared: SharedBackend | None) -> None:
        self.conn = conn
        self.readonly = readonly
        #: The shared database's hooks (None: stats.db, which only this process writes).
        self.shared = shared
        self.version = SCHEMA_VERSION
        (self.last_seq,) = conn.execute("SELECT last_seq FROM applied").fetchone()
        #: The engines of open matches, as committed (see _keep); never kept when shared.
        self.engines: dict[int, MatchStats] = {}
        #: Each player's aggregated statistics between writes (None when read-only or
        #: shared: another process or node may write).
        self.careers: queries.Careers | None = (
            None if readonly or shared is not None else queries.Careers())

    @classmethod
    def open_file(cls, path: Path, durability: str, readonly: bool) -> _Db:
        """stats.db: created and migrated unless read-only; a damaged file refused."""
        if path.exists() and not path.is_file():
            raise StartupError(f"{path} is a folder, not a statistics database")
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
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = " + ("FULL" if durability == "full"
                                                        else "NORMAL"))
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(conn, path)
            version = schema_version(conn)
            if version != SCHEMA_VERSION:
                raise StartupError(
                    f"{path}: schema version {version}, this program reads "
                    f"{SCHEMA_VERSION}; start the daemon once to migrate it"
                )
            return cls(conn, readonly=readonly, shared=None)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open_shared(cls, shared: SharedBackend, readonly: bool) -> _Db:
        """The shared database: the backend creates and migrates its schema."""
        conn = shared.connect()
        try:
            return cls(conn, readonly=readonly, shared=shared)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        if not self.readonly and isinstance(self.conn, sqlite3.Connection):
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    def _begin(self) -> None:
        """Open a write transaction. A shared database is written by the leader only,
        but a deposed leader may still be finishing one: the applied mark, taken FOR
        UPDATE, makes two writers take turns, and is read again (another node may have
        moved it)."""
        if self.shared is None:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        self.conn.execute("BEGIN")
        (self.last_seq,) = self.conn.execute(
            "SELECT last_seq FROM applied FOR UPDATE").fetchone()

    def _commit(self, changed: frozenset[int]) -> None:
        """COMMIT; a shared database first checks the lease (a stale leader's
        transaction raises and is rolled back by the caller) and, after it, says which
        matches changed."""
        if self.shared is None:
            self.conn.execute("COMMIT")
            return
        self.shared.before_commit(self.conn)
        self.conn.execute("COMMIT")
        if changed:
            self.shared.after_commit(self.conn, changed)

    def stored_counters(self) -> tuple[int, int]:
        rows = dict(self.conn.execute("SELECT name, value FROM counters").fetchall())
        return int(rows.get("stale_skipped", 0)), int(rows.get("bogus_goals", 0))

    # -- applying jobs ----------------------------------------------------------------------

    def apply(self, job: Job) -> tuple[Outcome, frozenset[int]]:
        """One job in its own transaction: (what happened, the matches it changed)."""
        outcomes, changed = self.apply_run((job,))
        return outcomes[0], changed

    def apply_run(self, jobs: Sequence[Job]) -> tuple[list[Outcome], frozenset[int]]:
        """Consecutive jobs in ONE transaction with the last applied seq: all or nothing.

        Each job is applied as the single path would (a savepoint keeps a job that
        changed nothing from writing). The engines of the matches the run touched are
        written back once, at the end, with the derived figures. If anything fails the
        whole run is rolled back, the engines it touched are forgotten (they are read
        again from the file), and the error is raised.
        """
        conn = self.conn
        tx = _Tx()
        self._begin()
        try:
            outcomes = [self._one(job, tx) for job in jobs]
            if not tx.write:
                conn.execute("ROLLBACK")
                return outcomes, frozenset()
            self._write_back(tx)
            if tx.last_seq > self.last_seq:
                conn.execute("UPDATE applied SET last_seq = ?", (tx.last_seq,))
            self._commit(frozenset(tx.changed))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for match_id in tx.engines:
                self.engines.pop(match_id, None)  # may hold effects that were rolled back
            raise
        self.last_seq = max(self.last_seq, tx.last_seq)
        self._keep(tx)
        return outcomes, frozenset(tx.changed)

    def _one(self, job: Job, tx: _Tx) -> Outcome:
        """Apply one job inside the open transaction."""
        conn = self.conn
        # At or below the mark: a replay after a crash, or a dead letter put back in its
        # old place. It runs as a late event: its snapshot is older than the state and is
        # skipped, its facts (a goal, an end) are stored unless already there; the
        # engine, whose state was committed with the mark, is not fed it again.
        revisit = job.seq <= self.last_seq
        event = formats.parse(job.payload)
        if isinstance(event, formats.Snapshot) and not revisit:
            fast = self._same_scoreboard(event, job, tx)
            if fast is not None:
                return fast
        self._write_marks(tx, job.source or "")
        if isinstance(event, formats.Generic):
            # Nothing to store; the clock, phase and demolition events feed the engine.
            if revisit:
                return "replayed"
            if isinstance(event, _ENGINE_EVENTS):
                self._feed_generic(event, job, tx)
            return "unchanged"
        conn.execute("SAVEPOINT job")
        apply = Apply(conn, job, revisit=revisit, memo=tx.memo)
        outcome = apply.run(event)
        kept = not (outcome == "unchanged" or (revisit and outcome != "applied"))
        if kept:
            conn.execute("RELEASE job")
            tx.write = True
            if not revisit:
                tx.last_seq = max(tx.last_seq, job.seq)
        else:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            tx.memo.clear()  # it may hold rows of the undone writes
            if revisit:
                outcome = "replayed"
        match_id = apply.match_id
        if match_id is None and isinstance(event, formats.Snapshot) and not apply.late:
            match_id = self._match_of(tx, event.match_guid, apply.feed.current)
        if isinstance(event, formats.Snapshot):
            if not revisit:
                self._remember_scoreboard(tx, event, job, apply, outcome, match_id)
        else:
            # A goal, a start or an end can move a feed's mark or its current match, and
            # change what the next snapshot applies to: no remembered scoreboard stands.
            tx.boards.clear()
        if match_id is not None and not revisit and not apply.late \
                and outcome not in ("stale", "ignored"):
            self._feed(tx, match_id, event, job)
        if kept:
            for ended in apply.ended:
                self._engine(tx, ended).close()
                tx.fed.add(ended)
                tx.closed.add(ended)
                tx.changed.add(ended)
            if match_id is not None:
                tx.changed.add(match_id)
        return outcome

    def _same_scoreboard(self, event: formats.Snapshot, job: Job, tx: _Tx) -> Outcome | None:
        """The outcome of a snapshot whose scoreboard is the one its feed's last snapshot
        in this transaction left in the tables, without a statement: nothing in the
        tables would change but the feed's X-Sequence mark (written before the feed is
        read again, or at the commit). None when the full path must decide.

        At 60 UpdateStates a second the scoreboard changes about once a second (the
        clock), so this skips the tables for most ticks; the engine is fed as always.
        """
        feed = job.source or ""
        known = tx.boards.get(feed)
        if known is None or known[0] != _scoreboard(event):
            return None
        board, match_id, high = known
        outcome: Outcome = "unchanged"
        if job.sequence is not None:
            if high is not None and job.sequence <= high:
                return None  # late: the full path skips and counts it
            tx.marks[feed] = job.sequence
            tx.boards[feed] = (board, match_id, job.sequence)
            tx.last_seq = max(tx.last_seq, job.seq)
            outcome = "applied"  # the mark moved, as the full path would say
        self._feed(tx, match_id, event, job)
        return outcome

    def _remember_scoreboard(self, tx: _Tx, event: formats.Snapshot, job: Job, apply: Apply,
                             outcome: Outcome, match_id: int | None) -> None:
        """After the full path: what the tables now hold for this feed's snapshots. What
        other feeds knew of the same match stays true only if they knew this scoreboard
        (the same scoreboard writes the same rows); else their next snapshot takes the
        full path."""
        feed = job.source or ""
        if outcome not in ("applied", "unchanged") or apply.late or match_id is None:
            tx.boards.pop(feed, None)
            return
        board = _scoreboard(event)
        if outcome == "applied":
            # The rows changed (a player's name, say, is also another match's): only a
            # feed that knew this very scoreboard of this match still knows the rows.
            for other, (known, other_match, _high) in list(tx.boards.items()):
                if other != feed and (other_match != match_id or known != board):
                    del tx.boards[other]
        tx.boards[feed] = (board, match_id, apply.feed.high_sequence)

    def _write_marks(self, tx: _Tx, feed: str | None = None) -> None:
        """Write the X-Sequence marks kept back by _same_scoreboard (one feed's, or all)."""
        for name in [feed] if feed is not None else list(tx.marks):
            mark = tx.marks.pop(name, None) if name is not None else None
            if mark is not None:
                cur = self.conn.execute("UPDATE feeds SET high_sequence = ? WHERE feed = ?",
                                        (mark, name))
                known = tx.memo.get(("feed", name))
                if known is not None and cur.rowcount:
                    tx.memo[("feed", name)] = (known[0], mark)
                else:
                    tx.memo.pop(("feed", name), None)

    def _feed_generic(self, event: formats.Generic, job: Job, tx: _Tx) -> None:
        """Feed a clock, phase or demolition event to its match's engine, if known.

        Late ones (at or below the feed's X-Sequence mark) count only if demolitions,
        which count whenever they come.
        """
        current, high = feed_row(self.conn, tx.memo, job.source or "")
        late = job.sequence is not None and high is not None and job.sequence <= high
        if late and not isinstance(event, formats.Demolition):
            return
        data = event.data
        guid = data.get("MatchGuid") if isinstance(data, Mapping) else None
        match_id = self._match_of(tx, guid if isinstance(guid, str) else None, current)
        if match_id is not None:
            self._feed(tx, match_id, event, job)

    def _match_of(self, tx: _Tx, guid: str | None, current: int | None) -> int | None:
        """The match an event names (by id), else the feed's current one; never a new one.
        A guid's id, once there, never changes (matches are never deleted): the
        transaction remembers the ids it found."""
        if guid:
            key = ("match id", guid)
            known = tx.memo.get(key)
            if known is not None:
                return int(known[0])
            row = self.conn.execute("SELECT id FROM matches WHERE guid = ?", (guid,)).fetchone()
            if row is None:
                return None
            tx.memo[key] = (int(row[0]),)
            return int(row[0])
        return current

    def _feed(self, tx: _Tx, match_id: int, event: formats.Event, job: Job) -> None:
        self._engine(tx, match_id).feed(event)
        tx.fed.add(match_id)
        tx.changed.add(match_id)
        tx.write = True
        tx.last_seq = max(tx.last_seq, job.seq)
        tx.last_event[match_id] = max(tx.last_event.get(match_id, 0.0), job.received_at)

    def _engine(self, tx: _Tx, match_id: int) -> MatchStats:
        """The match's engine: this transaction's, the cached one, or read from the file."""
        engine = tx.engines.get(match_id)
        if engine is not None:
            return engine
        engine = self.engines.pop(match_id, None)
        if engine is None:
            row = self.conn.execute(
                "SELECT state FROM match_engine WHERE match_id = ?", (match_id,)
            ).fetchone()
            engine = MatchStats()
            if row is not None:
                try:
                    engine = MatchStats.from_state(orjson.loads(row[0]))
                except (ValueError, TypeError, KeyError):
                    log.warning("stats_engine_state_unreadable", match_id=match_id)
        tx.engines[match_id] = engine
        return engine

    def _write_back(self, tx: _Tx) -> None:
        """Once per transaction: each fed engine's state and the figures it gives."""
        conn = self.conn
        self._write_marks(tx)
        for match_id in sorted(tx.fed):
            tx.written.update(write_derived(conn, match_id, tx.engines[match_id]))
        for match_id, at in tx.last_event.items():
            conn.execute(
                "UPDATE matches SET last_event_at = ? WHERE id = ? "
                "AND (last_event_at IS NULL OR last_event_at < ?)",
                (at, match_id, at),
            )

    def _keep(self, tx: _Tx) -> None:
        """After a commit: the engines of open matches stay in memory for the next run,
        and the careers of the players whose lines changed are read again when asked."""
        if self.careers is not None:
            self.careers.forget(tx.written)
        if self.shared is not None:
            return  # another node may write next: read the engines again
        engines = self.engines
        for match_id, engine in tx.engines.items():
            if match_id not in tx.closed:
                engines[match_id] = engine  # the newest last: evicted last
        while len(engines) > _ENGINES_KEPT:
            engines.pop(next(iter(engines)))

    def close_idle(self, cutoff: float) -> list[int]:
        """Close the open matches whose last event came before `cutoff` (end reason
        "idle", ended at their last event); the feeds playing them play none now."""
        conn = self.conn
        rows = conn.execute(
            "SELECT id, last_event_at FROM matches WHERE ended_at IS NULL "
            "AND last_event_at < ? ORDER BY id",
            (cutoff,),
        ).fetchall()
        if not rows:
            return []
        tx = _Tx()
        self._begin()
        try:
            for match_id, last_event_at in rows:
                conn.execute(
                    "UPDATE matches SET ended_at = ?, end_reason = 'idle' "
                    "WHERE id = ? AND ended_at IS NULL",
                    (last_event_at, match_id),
                )
                conn.execute("UPDATE feeds SET current_match = NULL WHERE current_match = ?",
                             (match_id,))
                self._engine(tx, match_id).close()
                tx.fed.add(match_id)
                tx.closed.add(match_id)
            self._write_back(tx)
            self._commit(frozenset(tx.closed))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for match_id in tx.engines:
                self.engines.pop(match_id, None)
            raise
        self._keep(tx)
        return [int(row[0]) for row in rows]

    # -- reading ------------------------------------------------------------------------------
