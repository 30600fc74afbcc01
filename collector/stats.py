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
import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from collector import formats
from collector.errors import StartupError
from collector.jobs import Job

log = structlog.get_logger(__name__)

STATS_FILE: Final = "stats.db"
_LINE_FIELDS: Final = ("score", "goals", "shots", "assists", "saves", "touches", "demos")
_RECENT_MATCHES: Final = 10

Outcome = Literal["applied", "unchanged", "replayed", "stale", "ignored"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: applied in its own transaction, in list order."""

    version: int
    description: str
    statements: tuple[str, ...]


#: The schema's history. Append only: a database at version N gets MIGRATIONS[N:].
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "matches, teams, player lines, goals, careers", (
        """CREATE TABLE applied (
            id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL)""",
        "INSERT INTO applied (id, last_seq) VALUES (1, 0)",
        """CREATE TABLE feeds (
            feed TEXT PRIMARY KEY, current_match INTEGER, high_sequence INTEGER)""",
        """CREATE TABLE matches (
            id INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT NOT NULL UNIQUE,
            feed TEXT NOT NULL, offline INTEGER NOT NULL, arena TEXT,
            started_at REAL NOT NULL, ended_at REAL, overtime INTEGER NOT NULL DEFAULT 0,
            winner INTEGER, time_seconds INTEGER, opened_seq INTEGER NOT NULL)""",
        """CREATE TABLE match_teams (
            match_id INTEGER NOT NULL REFERENCES matches (id), num INTEGER NOT NULL,
            name TEXT, score INTEGER, PRIMARY KEY (match_id, num))""",
        """CREATE TABLE players (
            id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL, primary_id TEXT, last_seq INTEGER NOT NULL,
            matches INTEGER NOT NULL DEFAULT 0, score INTEGER NOT NULL DEFAULT 0,
            goals INTEGER NOT NULL DEFAULT 0, shots INTEGER NOT NULL DEFAULT 0,
            assists INTEGER NOT NULL DEFAULT 0, saves INTEGER NOT NULL DEFAULT 0,
            touches INTEGER NOT NULL DEFAULT 0, demos INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE match_players (
            match_id INTEGER NOT NULL REFERENCES matches (id),
            player_id INTEGER NOT NULL REFERENCES players (id),
            name TEXT NOT NULL, team INTEGER, score INTEGER, goals INTEGER, shots INTEGER,
            assists INTEGER, saves INTEGER, touches INTEGER, demos INTEGER,
            updated_seq INTEGER NOT NULL, PRIMARY KEY (match_id, player_id))""",
        """CREATE TABLE goals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            match_id INTEGER NOT NULL REFERENCES matches (id), seq INTEGER NOT NULL UNIQUE,
            scorer TEXT NOT NULL, scorer_team INTEGER, assister TEXT, speed REAL,
            game_time REAL, received_at REAL NOT NULL)""",
        "CREATE INDEX goals_match ON goals (match_id)",
    )),
    Migration(2, "playlist, end reason, snapshot clock, goal details, counters", (
        "ALTER TABLE matches ADD COLUMN playlist TEXT",
        "ALTER TABLE matches ADD COLUMN end_reason TEXT",
        "ALTER TABLE matches ADD COLUMN last_snapshot_ts INTEGER",
        # The feed position of the event that opened the match (late events test it).
        "ALTER TABLE matches ADD COLUMN opened_pos INTEGER",
        "UPDATE matches SET opened_pos = opened_seq",
        "ALTER TABLE goals ADD COLUMN scorer_id INTEGER REFERENCES players (id)",
        "ALTER TABLE goals ADD COLUMN last_touch TEXT",
        "ALTER TABLE goals ADD COLUMN impact_x REAL",
        "ALTER TABLE goals ADD COLUMN impact_y REAL",
        "ALTER TABLE goals ADD COLUMN impact_z REAL",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO counters (name, value) VALUES ('stale_skipped', 0), ('bogus_goals', 0)",
        "CREATE INDEX match_players_player ON match_players (player_id, match_id)",
        "CREATE INDEX players_recent ON players (last_seq, id)",
    )),
    Migration(3, "a goal is stored once, whatever seq brought it", (
        "DELETE FROM goals WHERE game_time IS NOT NULL AND speed IS NOT NULL AND id NOT IN "
        "(SELECT min(id) FROM goals GROUP BY match_id, scorer, game_time, speed)",
        "CREATE UNIQUE INDEX goals_natural ON goals (match_id, scorer, game_time, speed)",
    )),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


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
        return await self._run(self._require().matches_page, limit, before)

    async def match(self, match_id: int | str) -> dict[str, Any] | None:
        """One match with its player lines and goals (by id or guid), or None."""
        return await self._run(self._require().match, match_id)

    async def players_page(self, *, limit: int = 20, before: tuple[int, int] | None = None
                           ) -> dict[str, Any]:
        """``{"players": [...], "next": cursor}``, most recently active first."""
        return await self._run(self._require().players_page, limit, before)

    async def player(self, player_id: int) -> dict[str, Any] | None:
        """A player's career totals and recent matches, or None."""
        return await self._run(self._require().player, player_id)


def parse_players_cursor(text: str) -> tuple[int, int] | None:
    """The players page cursor ``"<last_seq>.<id>"``, or None when malformed."""
    left, sep, right = text.partition(".")
    if not sep or not left.isdigit() or not right.isdigit() or len(text) > 40:
        return None
    return int(left), int(right)


# -- everything below runs in the store's executor thread ---------------------------------


@dataclass(slots=True)
class _Match:
    id: int
    guid: str
    offline: bool
    ended: bool
    opened_pos: int | None
    last_snapshot_ts: int | None


@dataclass(slots=True)
class _Feed:
    name: str
    current: int | None  # the match this feed plays now
    high_sequence: int | None  # the highest X-Sequence applied


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
                _migrate(conn, path)
            self.version = _schema_version(conn)
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
            outcome = _Apply(conn, job, revisit=revisit).run(event)
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

    def matches_page(self, limit: int, before: int | None) -> dict[str, Any]:
        rows = self.conn.execute(
            f"SELECT {_MATCH_COLUMNS} FROM matches WHERE id < ? ORDER BY id DESC LIMIT ?",  # noqa: S608
            (before if before is not None else 2**63 - 1, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        teams = self._teams([r[0] for r in rows])
        matches = [_match_json(r, teams.get(r[0], [])) for r in rows]
        return {"matches": matches, "next": str(rows[-1][0]) if more else None}

    def _teams(self, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        out: dict[int, list[dict[str, Any]]] = {}
        for match_id, num, name, score in self.conn.execute(
            f"SELECT match_id, num, name, score FROM match_teams WHERE match_id IN ({marks}) "  # noqa: S608 - only placeholders
            "ORDER BY match_id, num",
            list(ids),
        ):
            out.setdefault(match_id, []).append({"num": num, "name": name, "score": score})
        return out

    def match(self, key: int | str) -> dict[str, Any] | None:
        where = "id = ?" if isinstance(key, int) else "guid = ?"
        row = self.conn.execute(
            f"SELECT {_MATCH_COLUMNS} FROM matches WHERE {where}", (key,)  # noqa: S608
        ).fetchone()
        if row is None:
            return None
        match_id = row[0]
        out = _match_json(row, self._teams([match_id]).get(match_id, []))
        out["players"] = [
            {"player_id": r[0], "name": r[1], "primary_id": r[2], "team": r[3],
             **dict(zip(_LINE_FIELDS, r[4:], strict=True))}
            for r in self.conn.execute(
                "SELECT mp.player_id, mp.name, p.primary_id, mp.team, mp.score, mp.goals, "
                "mp.shots, mp.assists, mp.saves, mp.touches, mp.demos "
                "FROM match_players mp JOIN players p ON p.id = mp.player_id "
                "WHERE mp.match_id = ? ORDER BY mp.team IS NULL, mp.team, mp.score DESC, "
                "mp.player_id",
                (match_id,),
            )
        ]
        out["goals"] = [
            {"seq": r[0], "scorer": r[1], "scorer_id": r[2], "scorer_team": r[3],
             "assister": r[4], "speed": r[5], "game_time": r[6], "received_at": r[7],
             "last_touch": r[8],
             "impact": None if r[9] is None else {"x": r[9], "y": r[10], "z": r[11]}}
            for r in self.conn.execute(
                "SELECT seq, scorer, scorer_id, scorer_team, assister, speed, game_time, "
                "received_at, last_touch, impact_x, impact_y, impact_z "
                "FROM goals WHERE match_id = ? ORDER BY seq",
                (match_id,),
            )
        ]
        return out

    def players_page(self, limit: int, before: tuple[int, int] | None) -> dict[str, Any]:
        last, pid = before if before is not None else (2**63 - 1, 2**63 - 1)
        rows = self.conn.execute(
            f"SELECT {_PLAYER_COLUMNS} FROM players p "  # noqa: S608 - constants only
            "WHERE (p.last_seq, p.id) < (?, ?) ORDER BY p.last_seq DESC, p.id DESC LIMIT ?",
            (last, pid, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        players = [_player_json(r) for r in rows]
        cursor = f"{rows[-1][_PLAYER_LAST_SEQ]}.{rows[-1][0]}" if more else None
        return {"players": players, "next": cursor}

    def player(self, player_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {_PLAYER_COLUMNS} FROM players p WHERE p.id = ?",  # noqa: S608
            (player_id,),
        ).fetchone()
        if row is None:
            return None
        out = _player_json(row)
        out["recent_matches"] = [
            {"id": r[0], "guid": r[1], "arena": r[2], "playlist": r[3], "started_at": r[4],
             "ended_at": r[5], "winner": r[6], "team": r[7],
             "won": None if r[6] is None or r[7] is None else r[6] == r[7],
             **dict(zip(_LINE_FIELDS, r[8:], strict=True))}
            for r in self.conn.execute(
                "SELECT m.id, m.guid, m.arena, m.playlist, m.started_at, m.ended_at, "
                "m.winner, mp.team, mp.score, mp.goals, mp.shots, mp.assists, mp.saves, "
                "mp.touches, mp.demos FROM match_players mp "
                "JOIN matches m ON m.id = mp.match_id WHERE mp.player_id = ? "
                "ORDER BY m.id DESC LIMIT ?",
                (player_id, _RECENT_MATCHES),
            )
        ]
        return out


_MATCH_COLUMNS: Final = (
    "id, guid, arena, playlist, started_at, ended_at, overtime, winner, offline, "
    "end_reason, time_seconds"
)
_PLAYER_COLUMNS: Final = (
    "p.id, p.name, p.primary_id, p.matches, p.score, p.goals, p.shots, p.assists, p.saves, "
    "p.touches, p.demos, p.last_seq, "
    "(SELECT count(*) FROM match_players mp JOIN matches m ON m.id = mp.match_id "
    " WHERE mp.player_id = p.id AND m.winner IS NOT NULL AND m.winner = mp.team)"
)
_PLAYER_LAST_SEQ: Final = 11


def _match_json(row: Sequence[Any], teams: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row[0], "guid": row[1], "arena": row[2], "playlist": row[3],
        "started_at": row[4], "ended_at": row[5], "overtime": bool(row[6]),
        "winner": row[7], "offline": bool(row[8]), "end_reason": row[9],
        "time_seconds": row[10], "teams": teams,
    }


def _player_json(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0], "name": row[1], "primary_id": row[2], "matches": row[3],
        "wins": row[12], "score": row[4], "goals": row[5], "shots": row[6],
        "assists": row[7], "saves": row[8], "touches": row[9], "demos": row[10],
    }


class _Apply:
    """One job's changes, inside the transaction the caller opened."""

    def __init__(self, conn: sqlite3.Connection, job: Job, *, revisit: bool = False) -> None:
        self.conn = conn
        self.job = job
        self.feed = self._feed(job.source or "")
        #: The job's place in its feed's own numbering.
        self.position = job.sequence if job.sequence is not None else job.seq
        # Queue order needs no mark of its own: the worker runs jobs in seq order, and a
        # job at or below last_seq comes here as a revisit.
        high = self.feed.high_sequence
        self.late = revisit or (
            job.sequence is not None and high is not None and job.sequence <= high
        )
        self.revisit = revisit
        self.changed = False

    def run(self, event: formats.Event) -> Outcome:
        if isinstance(event, formats.Ignored):
            self._count("bogus_goals")
            return "ignored"
        if self.late and not self._late_allowed(event):
            self._count("stale_skipped")
            return "stale"
        if isinstance(event, formats.Snapshot):
            outcome = self._snapshot(event)
            if outcome == "stale":
                return outcome
        elif isinstance(event, formats.Goal):
            self._goal(event)
        elif isinstance(event, formats.MatchStarted):
            self._started(event)
        elif isinstance(event, formats.MatchEnded):
            self._ended(event)
        elif isinstance(event, formats.MatchClosed):
            self._closed(event)
        if not self.late:
            self._advance_mark()
        self._save_feed()
        return "applied" if self.changed else "unchanged"

    def _late_allowed(self, event: formats.Event) -> bool:
        """Facts about a named match may come late; snapshots and unnamed events may not."""
        if isinstance(event, formats.Snapshot | formats.MatchStarted):
            return False
        guid = getattr(event, "match_guid", None)
        if guid:
            return True
        if isinstance(event, formats.Goal) and self.feed.current is not None:
            # A late goal still belongs to the current match if that one opened before it.
            current = self._match_by_id(self.feed.current)
            return current is not None and (current.opened_pos or 0) <= self.position
        return False

    # -- feeds and counters ---------------------------------------------------------------

    def _feed(self, name: str) -> _Feed:
        row = self.conn.execute(
            "SELECT current_match, high_sequence FROM feeds WHERE feed = ?", (name,)
        ).fetchone()
        if row is None:
            return _Feed(name, None, None)
        return _Feed(name, row[0], row[1])

    def _advance_mark(self) -> None:
        if self.job.sequence is not None:
            self.feed.high_sequence = self.job.sequence
            self.changed = True

    def _save_feed(self) -> None:
        f = self.feed
        self.conn.execute(
            "INSERT INTO feeds (feed, current_match, high_sequence) VALUES (?, ?, ?) "
            "ON CONFLICT (feed) DO UPDATE SET current_match = excluded.current_match, "
            "high_sequence = excluded.high_sequence",
            (f.name, f.current, f.high_sequence),
        )

    def _count(self, name: str) -> None:
        if not self.revisit:  # counted the first time already
            self.conn.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (name,))

    # -- matches --------------------------------------------------------------------------

    def _match_by_id(self, match_id: int) -> _Match | None:
        return self._match_where("id = ?", match_id)

    def _match_where(self, where: str, value: Any) -> _Match | None:
        row = self.conn.execute(
            "SELECT id, guid, offline, ended_at IS NOT NULL, opened_pos, last_snapshot_ts "  # noqa: S608 - `where` is one of two constants
            f"FROM matches WHERE {where}",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return _Match(id=row[0], guid=row[1], offline=bool(row[2]), ended=bool(row[3]),
                      opened_pos=row[4], last_snapshot_ts=row[5])

    def _is_empty(self, match: _Match) -> bool:
        """True for a match opened by a start event that nothing has filled yet."""
        (empty,) = self.conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM match_players WHERE match_id = ?) "
            "AND NOT EXISTS (SELECT 1 FROM goals WHERE match_id = ?)",
            (match.id, match.id),
        ).fetchone()
        return bool(empty)

    def _create(self, guid: str | None) -> _Match:
        """A new match for this feed; it becomes the feed's current one."""
        job = self.job
        offline = not guid
        name = guid or f"offline:{self.feed.name or '-'}:{job.seq}"
        self._supersede_current()
        cur = self.conn.execute(
            "INSERT INTO matches (guid, feed, offline, started_at, opened_seq, opened_pos) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, self.feed.name, int(offline), job.received_at, job.seq, self.position),
        )
        match_id = cur.lastrowid
        assert match_id is not None
        self.feed.current = match_id
        self.changed = True
        log.info("match_opened", match_id=match_id, guid=name, feed=self.feed.name)
        return _Match(id=match_id, guid=name, offline=offline, ended=False,
                      opened_pos=self.position, last_snapshot_ts=None)

    def _supersede_current(self) -> None:
        """A feed plays one match at a time: a new one ends the previous one."""
        if self.feed.current is None:
            return
        self._end(self.feed.current, winner=None, reason="superseded")

    def _end(self, match_id: int, *, winner: int | None, reason: str) -> None:
        cur = self.conn.execute(
            "UPDATE matches SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
            (self.job.received_at, reason, match_id),
        )
        if cur.rowcount:
            self.changed = True
        if winner is None:
            winner = self._winner_by_score(match_id) if reason == "ended" else None
        if winner is not None:
            cur = self.conn.execute(
                "UPDATE matches SET winner = ? WHERE id = ? AND winner IS NOT ?",
                (winner, match_id, winner),
            )
            self.changed = self.changed or cur.rowcount > 0

    def _winner_by_score(self, match_id: int) -> int | None:
        rows = self.conn.execute(
            "SELECT num, score FROM match_teams WHERE match_id = ? AND score IS NOT NULL "
            "ORDER BY score DESC",
            (match_id,),
        ).fetchall()
        if len(rows) >= 2 and rows[0][1] > rows[1][1]:
            return int(rows[0][0])
        return None

    def _resolve(self, guid: str | None, *, snapshot: formats.Snapshot | None = None
                 ) -> _Match | None:
        """The match an event belongs to, opening one when the event starts a new match."""
        if guid:
            match = self._match_where("guid = ?", guid)
            if match is not None:
                if not self.late and self.feed.current != match.id and not match.ended:
                    newer = self.feed.current is None or match.id > self.feed.current
                    if newer:
                        self.feed.current = match.id
                return match
            if self.late:
                # A late fact about a match never seen: record it without touching the feed.
                playing, self.feed.current = self.feed.current, None
                match = self._create(guid)
                self.feed.current = playing
                return match
            current = self._current()
            if current is not None and current.offline and not current.ended \
                    and self._is_empty(current):
                # The start event came without the id (offline placeholder): adopt it.
                self.conn.execute("UPDATE matches SET guid = ?, offline = 0 WHERE id = ?",
                                  (guid, current.id))
                self.changed = True
                return dataclasses.replace(current, guid=guid, offline=False)
            return self._create(guid)
        current = self._current()
        if current is None:
            return self._create(None)
        if guid == "" and not current.offline:
            return self._create(None)  # the format says offline; the current one is online
        if snapshot is not None and current.offline and self._went_down(current, snapshot):
            return self._create(None)  # numbers went down: a new game without a start event
        return current

    def _current(self) -> _Match | None:
        if self.feed.current is None:
            return None
        return self._match_by_id(self.feed.current)

    def _went_down(self, match: _Match, snapshot: formats.Snapshot) -> bool:
        old = {
            row[0]: row[1:]
            for row in self.conn.execute(
                "SELECT p.key, mp.score, mp.goals FROM match_players mp "
                "JOIN players p ON p.id = mp.player_id WHERE mp.match_id = ?",
                (match.id,),
            )
        }
        for line in snapshot.players:
            before = old.get(_player_key(line))
            if before is None:
                continue
            for then, now in zip(before, (line.score, line.goals), strict=True):
                if then is not None and now is not None and now < then:
                    return True
        return False

    # -- events ---------------------------------------------------------------------------

    def _started(self, event: formats.MatchStarted) -> None:
        if event.match_guid:
            self._resolve(event.match_guid)
            return
        current = self._current()
        if current is not None and current.offline and not current.ended \
                and self._is_empty(current):
            return  # MatchInitialized right after MatchCreated: the same match
        self._create(None)

    def _ended(self, event: formats.MatchEnded) -> None:
        match = self._resolve(event.match_guid) if event.match_guid else self._current()
        if match is None:
            return
        self._end(match.id, winner=event.winner, reason="ended")

    def _closed(self, event: formats.MatchClosed) -> None:
        match = self._resolve(event.match_guid) if event.match_guid else self._current()
        if match is None:
            return
        self._end(match.id, winner=None, reason="destroyed")
        if self.feed.current == match.id and not self.late:
            self.feed.current = None
            self.changed = True

    def _goal(self, goal: formats.Goal) -> None:
        if goal.match_guid:
            match = self._resolve(goal.match_guid)
        elif self.late:
            match = self._current()
        else:
            match = self._resolve(goal.match_guid)
        if match is None:
            return
        scorer_id = self._player_id_in(match.id, goal.scorer, goal.scorer_id)
        x, y, z = goal.impact if goal.impact is not None else (None, None, None)
        cur = self.conn.execute(
            "INSERT INTO goals (match_id, seq, scorer, scorer_id, scorer_team, assister, speed, "
            "game_time, received_at, last_touch, impact_x, impact_y, impact_z) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (match.id, self.job.seq, goal.scorer, scorer_id, goal.scorer_team, goal.assister,
             goal.speed, goal.game_time, self.job.received_at, goal.last_touch, x, y, z),
        )
        self.changed = self.changed or cur.rowcount > 0

    def _player_id_in(self, match_id: int, name: str, primary_id: str | None) -> int | None:
        if primary_id is not None:
            row = self.conn.execute(
                "SELECT id FROM players WHERE key = ?", (primary_id,)
            ).fetchone()
            if row is not None:
                return int(row[0])
        row = self.conn.execute(
            "SELECT player_id FROM match_players WHERE match_id = ? AND name = ? LIMIT 1",
            (match_id, name),
        ).fetchone()
        return None if row is None else int(row[0])

    def _snapshot(self, snap: formats.Snapshot) -> Outcome | None:
        if not snap.players and not snap.teams:
            return None  # nothing to keep, and no reason to open a match for it
        match = self._resolve(snap.match_guid, snapshot=snap)
        assert match is not None
        if snap.timestamp is not None:
            if match.last_snapshot_ts is not None and snap.timestamp < match.last_snapshot_ts:
                self._count("stale_skipped")
                return "stale"
            if snap.timestamp != match.last_snapshot_ts:
                self.conn.execute("UPDATE matches SET last_snapshot_ts = ? WHERE id = ?",
                                  (snap.timestamp, match.id))
                self.changed = True
        self._match_fields(match, snap)
        for team in snap.teams:
            cur = self.conn.execute(
                "INSERT INTO match_teams (match_id, num, name, score) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (match_id, num) DO UPDATE SET "
                "name = coalesce(excluded.name, name), score = coalesce(excluded.score, score) "
                "WHERE name IS NOT coalesce(excluded.name, name) "
                "OR score IS NOT coalesce(excluded.score, score)",
                (match.id, team.num, team.name, team.score),
            )
            self.changed = self.changed or cur.rowcount > 0
        for line in snap.players:
            self._line(match.id, line)
        return None

    def _match_fields(self, match: _Match, snap: formats.Snapshot) -> None:
        cur = self.conn.execute(
            "UPDATE matches SET arena = coalesce(?, arena), playlist = coalesce(?, playlist), "
            "overtime = max(overtime, ?), time_seconds = coalesce(?, time_seconds) "
            "WHERE id = ? AND (arena IS NOT coalesce(?, arena) "
            "OR playlist IS NOT coalesce(?, playlist) OR overtime < ? "
            "OR time_seconds IS NOT coalesce(?, time_seconds))",
            (snap.arena, snap.playlist, int(snap.overtime), snap.time_seconds, match.id,
             snap.arena, snap.playlist, int(snap.overtime), snap.time_seconds),
        )
        self.changed = self.changed or cur.rowcount > 0
        if snap.winner is not None:
            cur = self.conn.execute(
                "UPDATE matches SET winner = ? WHERE id = ? AND winner IS NOT ?",
                (snap.winner, match.id, snap.winner),
            )
            self.changed = self.changed or cur.rowcount > 0

    def _line(self, match_id: int, line: formats.PlayerLine) -> None:
        """Store a player's latest line in a match; careers change by the difference."""
        player_id, name_changed = self._player(line)
        old = self.conn.execute(
            "SELECT name, team, score, goals, shots, assists, saves, touches, demos "
            "FROM match_players WHERE match_id = ? AND player_id = ?",
            (match_id, player_id),
        ).fetchone()
        new_numbers = [getattr(line, f) for f in _LINE_FIELDS]
        if old is None:
            numbers = [n if n is not None else 0 for n in new_numbers]
            team = line.team
            delta = numbers
            self.conn.execute(
                "INSERT INTO match_players (match_id, player_id, name, team, score, goals, "
                "shots, assists, saves, touches, demos, updated_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (match_id, player_id, line.name, team, *numbers, self.job.seq),
            )
            first = 1
        else:
            old_numbers = [n if n is not None else 0 for n in old[2:]]
            numbers = [o if n is None else n for n, o in zip(new_numbers, old_numbers,
                                                              strict=True)]
            team = old[1] if line.team is None else line.team
            if numbers == old_numbers and team == old[1] and line.name == old[0]:
                if name_changed:
                    self._touch_player(player_id, [0] * len(_LINE_FIELDS), 0)
                return
            delta = [n - o for n, o in zip(numbers, old_numbers, strict=True)]
            self.conn.execute(
                "UPDATE match_players SET name = ?, team = ?, score = ?, goals = ?, shots = ?, "
                "assists = ?, saves = ?, touches = ?, demos = ?, updated_seq = ? "
                "WHERE match_id = ? AND player_id = ?",
                (line.name, team, *numbers, self.job.seq, match_id, player_id),
            )
            first = 0
        self._touch_player(player_id, delta, first)

    def _touch_player(self, player_id: int, delta: Sequence[int], first: int) -> None:
        self.conn.execute(
            "UPDATE players SET last_seq = ?, matches = matches + ?, score = score + ?, "
            "goals = goals + ?, shots = shots + ?, assists = assists + ?, saves = saves + ?, "
            "touches = touches + ?, demos = demos + ? WHERE id = ?",
            (self.job.seq, first, *delta, player_id),
        )
        self.changed = True

    def _player(self, line: formats.PlayerLine) -> tuple[int, bool]:
        """(players.id, whether its name or id changed), creating the player if new."""
        key = _player_key(line)
        row = self.conn.execute(
            "SELECT id, name, primary_id FROM players WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            cur = self.conn.execute(
                "INSERT INTO players (key, name, primary_id, last_seq) VALUES (?, ?, ?, ?)",
                (key, line.name, line.primary_id, self.job.seq),
            )
            assert cur.lastrowid is not None
            self.changed = True
            return cur.lastrowid, False
        if row[1] != line.name and line.primary_id is not None:
            self.conn.execute("UPDATE players SET name = ? WHERE id = ?", (line.name, row[0]))
            self.changed = True
            return int(row[0]), True
        return int(row[0]), False


def _player_key(line: formats.PlayerLine) -> str:
    """A player is their account id; bots and id-less formats are known by name."""
    return line.primary_id if line.primary_id is not None else f"name:{line.name}"


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per migration."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    version = _schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StartupError(
            f"{path}: schema version {version} is newer than this program's "
            f"({SCHEMA_VERSION}); upgrade collector"
        )
    for migration in MIGRATIONS[version:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("stats_migrated", path=str(path), version=migration.version,
                 description=migration.description)
