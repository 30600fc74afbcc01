"""The PostgreSQL schema and its history, created and migrated by the program.

Like stats.db's (collector/stats/schema.py): migrations applied in order, each in its
own transaction, append only: a component at version N gets its MIGRATIONS[N:]. Several
nodes may start at once on one database, so each migration runs under a transaction
advisory lock and reads the version again once it holds it. `schema_versions` keeps one
row per component ("log" here; the statistics will add theirs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from collector.errors import StartupError
from collector.postgres.db import Connection

log = structlog.get_logger(__name__)

#: The first key of every advisory lock the program takes (two-key form, so that other
#: programs' single-key locks on the same database cannot collide): "coll" in ASCII.
LOCK_SPACE: Final = 0x636F6C6C
#: Second keys. APPEND is held by each append transaction (the order of seqs); LEADER by
#: the leader's session; MIGRATE by each migration transaction.
APPEND_LOCK: Final = 1
LEADER_LOCK: Final = 2
MIGRATE_LOCK: Final = 3


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a component's schema: applied in its own transaction, in list order."""

    version: int
    description: str
    statements: tuple[str, ...]


#: The shared log's history. Append only.
LOG_MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "the shared log, idempotency keys, dead letters, the apply mark, the epoch", (
        # Seqs are taken from this sequence only under the APPEND lock (collector.postgres
        # .log): seq order is then commit order. A rolled-back append leaves a gap.
        "CREATE SEQUENCE log_seq AS bigint",
        # One row per event, the event's JSON text as received. `revived`: a dead letter
        # put back in its old place (its seq is below the apply mark; it runs first).
        """CREATE TABLE log (
            seq bigint PRIMARY KEY, payload bytea NOT NULL,
            received_at double precision NOT NULL, source text, sequence bigint,
            attempts integer NOT NULL DEFAULT 0, revived boolean NOT NULL DEFAULT false)""",
        "CREATE INDEX log_revived ON log (seq) WHERE revived",
        # An Idempotency-Key by its SHA-256 (any length and content fits the index).
        """CREATE TABLE log_keys (
            digest bytea PRIMARY KEY, first_seq bigint NOT NULL, last_seq bigint NOT NULL,
            accepted integer NOT NULL, created_at double precision NOT NULL)""",
        "CREATE INDEX log_keys_created ON log_keys (created_at)",
        """CREATE TABLE log_dead (
            seq bigint PRIMARY KEY, payload bytea NOT NULL,
            received_at double precision NOT NULL, source text, sequence bigint,
            attempts integer NOT NULL, error text NOT NULL,
            failed_at double precision NOT NULL)""",
        # One row. applied_seq: every regular job <= it is done (acknowledged or dead),
        # moved only by the leader whose epoch is current (the fence).
        """CREATE TABLE log_state (
            id integer PRIMARY KEY CHECK (id = 1), applied_seq bigint NOT NULL,
            processed_total bigint NOT NULL, epoch bigint NOT NULL, leader text,
            leader_since double precision)""",
        "INSERT INTO log_state (id, applied_seq, processed_total, epoch) VALUES (1, 0, 0, 0)",
        # The database's clock in UNIX seconds: key retention and dead letters' times are
        # read off one clock, whatever the nodes' clocks say.
        """CREATE FUNCTION log_now() RETURNS double precision LANGUAGE sql VOLATILE
            AS 'SELECT extract(epoch FROM clock_timestamp())::double precision'""",
    )),
)

_VERSIONS_TABLE: Final = """CREATE TABLE IF NOT EXISTS schema_versions (
    component text PRIMARY KEY, version integer NOT NULL)"""


async def schema_version(conn: Connection, component: str) -> int:
    """The version of `component` in the database (0 when it has none yet)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_versions') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval(
        "SELECT version FROM schema_versions WHERE component = $1", component)
    return int(version or 0)


async def migrate(conn: Connection, component: str = "log",
                  migrations: Sequence[Migration] = LOG_MIGRATIONS) -> int:
    """Bring `component` to its latest version, one transaction per migration (safe with
    several nodes starting at once); returns the version reached."""
    latest = migrations[-1].version
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE,
                               MIGRATE_LOCK)
            await conn.execute(_VERSIONS_TABLE)
            version = await schema_version(conn, component)
            if version > latest:
                raise StartupError(
                    f"PostgreSQL schema of {component!r} is at version {version}, newer "
                    f"than this program's ({latest}); upgrade collector")
            if version == latest:
                return version
            migration = migrations[version]
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_versions (component, version) VALUES ($1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                component, migration.version)
        log.info("postgres_migrated", component=component, version=migration.version,
                 description=migration.description)
