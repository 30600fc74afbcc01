"""stats.db's schema and its history: migrations applied in order, each in its own
transaction. Append only: a database at version N gets MIGRATIONS[N:].
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from collector.errors import StartupError

log = structlog.get_logger(__name__)

STATS_FILE: Final = "stats.db"
#: The numbers of a player's line in a match (and of their career).
LINE_FIELDS: Final = ("score", "goals", "shots", "assists", "saves", "touches", "demos")


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
    Migration(4, "tick-derived statistics, match duration and last event, sessions", (
        # The derived statistics (collector.stats.derived) of a player in a match, as the
        # JSON of MatchStats.players()[key]; NULL until the match has ticks.
        "ALTER TABLE match_players ADD COLUMN stats TEXT",
        "ALTER TABLE match_teams ADD COLUMN possession_s REAL",
        "ALTER TABLE matches ADD COLUMN duration_s REAL",
        # When the last event of the match was received (closing a match gone quiet).
        "ALTER TABLE matches ADD COLUMN last_event_at REAL",
        "UPDATE matches SET last_event_at = coalesce(ended_at, started_at)",
        # The engine's state (MatchStats.to_state()), committed with the applied seq:
        # part of the exactly-once state, so a replay after kill -9 gives the same figures.
        """CREATE TABLE match_engine (
            match_id INTEGER PRIMARY KEY REFERENCES matches (id), state TEXT NOT NULL)""",
        "CREATE INDEX matches_open ON matches (ended_at, last_event_at)",
        "CREATE INDEX matches_started ON matches (started_at)",
    )),
    Migration(5, "team colours, each player's car as last seen", (
        # "#rrggbb" (collector.stats.formats), the last one the feed sent that was one;
        # NULL until then (and for matches stored before this version).
        "ALTER TABLE match_teams ADD COLUMN color_primary TEXT",
        "ALTER TABLE match_teams ADD COLUMN color_secondary TEXT",
        # The JSON of MatchStats.cars()[key], written with the derived statistics; NULL
        # when the latest UpdateState did not show that car, or the match is over.
        "ALTER TABLE match_players ADD COLUMN car TEXT",
    )),
    Migration(6, "the game clock of each goal", (
        # What the clock showed when the goal fell (the match's latest snapshot: the team
        # score goes up one message before GoalScored), and whether in overtime. NULL for
        # goals stored before, and for a goal applied late (a dead letter put back).
        "ALTER TABLE goals ADD COLUMN clock INTEGER",
        "ALTER TABLE goals ADD COLUMN overtime INTEGER",
    )),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per migration."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    version = schema_version(conn)
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
