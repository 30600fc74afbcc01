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
#: The SQLSTATE log_append raises when an Idempotency-Key was stored meanwhile by an
#: append that did not take the lock (never with it: the key is looked up under it).
KEY_CONFLICT_STATE: Final = "CL001"

# The append, in one call (one round trip, so the lock is held for as short as possible):
# requests i = 1..n with counts[i] events each, their arrival time, X-Source, X-Sequence
# and the SHA-256 of their Idempotency-Key (NULL for none). The events' texts come as one
# bytea, `body`, their concatenation in order, with `ends`, where each event's text ends
# in it (event g spans ends[g-1] .. ends[g], ends[0] being 0): one value to send and
# receive instead of an array of as many values as events (asyncpg encodes and the
# server decodes each element of a bytea[]: 2.6 ms for 800 events of 1 kB here, 0.5 ms
# for one blob), and an element of a fixed-width array is found in constant time.
# Under the append lock (when `serialise`), a request whose key is retained gets the first
# answer (r_replayed) and stores nothing; the others get consecutive seqs. Everything that
# does not need the lock (decoding the arguments, the requests' offsets) happens before
# it is taken; under it, the keys are looked up, the seqs are taken as one block (one
# nextval and one setval, not one nextval per event: only lock holders take seqs), the
# rows inserted, the keys stored.
# synchronous_commit is set for the rest of the transaction, its commit included (the
# function is called alone, in autocommit, or inside the caller's transaction).
# A key repeated within the group gets the first one's answer. Without the lock (the
# tests' control) the seqs are taken one by one, as concurrent appends interleave.
LOG_APPEND: Final = """
CREATE FUNCTION log_append(
    serialise boolean, counts integer[], body bytea, ends integer[],
    received double precision[], sources text[], sequences bigint[], digests bytea[],
    ttl double precision)
RETURNS TABLE (r_ord integer, r_first bigint, r_last bigint, r_accepted integer,
               r_replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    reqs integer := coalesce(array_length(counts, 1), 0);
    keep boolean[] := array_fill(true, ARRAY[reqs]);
    firsts bigint[] := array_fill(NULL::bigint, ARRAY[reqs]);
    lasts bigint[] := array_fill(NULL::bigint, ARRAY[reqs]);
    taken_n integer[] := array_fill(0, ARRAY[reqs]);
    same_as integer[] := array_fill(0, ARRAY[reqs]);
    offs integer[] := array_fill(0, ARRAY[reqs]);  -- events before request i (all)
    soffs integer[] := array_fill(0, ARRAY[reqs]);  -- stored events before request i
    total integer := 0;
    stored integer := 0;
    first_seq bigint;
    seqs bigint[];
    hit record;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    FOR i IN 2 .. reqs LOOP
        offs[i] := offs[i - 1] + counts[i - 1];
    END LOOP;
    IF serialise THEN
        PERFORM pg_advisory_xact_lock(1668246636, 1);  -- LOCK_SPACE, APPEND_LOCK
    END IF;
    -- Which requests store their events: not those whose key is retained, nor a key's
    -- repetition within this group.
    FOR i IN 1 .. reqs LOOP
        IF digests[i] IS NOT NULL THEN
            SELECT k.first_seq, k.last_seq, k.accepted INTO hit FROM log_keys AS k
             WHERE k.digest = digests[i] AND k.created_at > log_now() - ttl;
            IF FOUND THEN
                keep[i] := false;
                firsts[i] := hit.first_seq;
                lasts[i] := hit.last_seq;
                taken_n[i] := hit.accepted;
            ELSE
                FOR e IN 1 .. i - 1 LOOP
                    IF keep[e] AND digests[e] = digests[i] THEN
                        keep[i] := false;
                        same_as[i] := e;
                        EXIT;
                    END IF;
                END LOOP;
            END IF;
        END IF;
        soffs[i] := total;
        IF keep[i] THEN
            total := total + counts[i];
        END IF;
    END LOOP;
    IF total > 0 THEN
        IF serialise THEN
            -- Only lock holders take seqs: this block is consecutive, and after every
            -- seq of the appends committed before.
            first_seq := nextval('log_seq');
            IF total > 1 THEN
                PERFORM setval('log_seq', first_seq + total - 1);
            END IF;
            INSERT INTO log (seq, payload, received_at, source, sequence)
            SELECT first_seq + soffs[r.i] + j - 1,
                   substring(body FROM CASE WHEN offs[r.i] + j = 1 THEN 1
                                            ELSE ends[offs[r.i] + j - 1] + 1 END
                             FOR ends[offs[r.i] + j]
                                 - CASE WHEN offs[r.i] + j = 1 THEN 0
                                        ELSE ends[offs[r.i] + j - 1] END),
                   received[r.i], sources[r.i], sequences[r.i] + (j - 1)
              FROM generate_series(1, reqs) AS r(i), generate_series(1, counts[r.i]) AS j
             WHERE keep[r.i];
        ELSE
            -- Without the lock (the tests' control), concurrent appends interleave.
            SELECT array_agg(t.s ORDER BY t.s) INTO seqs
              FROM (SELECT nextval('log_seq') AS s FROM generate_series(1, total)) AS t;
            INSERT INTO log (seq, payload, received_at, source, sequence)
            SELECT seqs[soffs[r.i] + j],
                   substring(body FROM CASE WHEN offs[r.i] + j = 1 THEN 1
                                            ELSE ends[offs[r.i] + j - 1] + 1 END
                             FOR ends[offs[r.i] + j]
                                 - CASE WHEN offs[r.i] + j = 1 THEN 0
                                        ELSE ends[offs[r.i] + j - 1] END),
                   received[r.i], sources[r.i], sequences[r.i] + (j - 1)
              FROM generate_series(1, reqs) AS r(i), generate_series(1, counts[r.i]) AS j
             WHERE keep[r.i];
        END IF;
    END IF;
    FOR i IN 1 .. reqs LOOP
        r_ord := i;
        IF keep[i] THEN
            IF first_seq IS NOT NULL THEN
                r_first := first_seq + stored;
                r_last := first_seq + stored + counts[i] - 1;
            ELSE
                r_first := seqs[stored + 1];
                r_last := seqs[stored + counts[i]];
            END IF;
            r_accepted := counts[i];
            r_replayed := false;
            stored := stored + counts[i];
            firsts[i] := r_first;
            lasts[i] := r_last;
            taken_n[i] := counts[i];
            IF digests[i] IS NOT NULL THEN
                -- An expired key is replaced; a retained one cannot be there (looked up
                -- under the lock) unless the append runs without the lock.
                INSERT INTO log_keys AS k (digest, first_seq, last_seq, accepted, created_at)
                VALUES (digests[i], r_first, r_last, counts[i], log_now())
                ON CONFLICT (digest) DO UPDATE SET first_seq = EXCLUDED.first_seq,
                    last_seq = EXCLUDED.last_seq, accepted = EXCLUDED.accepted,
                    created_at = EXCLUDED.created_at
                WHERE k.created_at <= log_now() - ttl;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'Idempotency-Key stored by a concurrent append'
                        USING ERRCODE = 'CL001';  -- KEY_CONFLICT_STATE
                END IF;
            END IF;
        ELSIF same_as[i] > 0 THEN
            r_first := firsts[same_as[i]];
            r_last := lasts[same_as[i]];
            r_accepted := taken_n[same_as[i]];
            r_replayed := true;
        ELSE
            r_first := firsts[i];
            r_last := lasts[i];
            r_accepted := taken_n[i];
            r_replayed := true;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$"""


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
        LOG_APPEND,
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
