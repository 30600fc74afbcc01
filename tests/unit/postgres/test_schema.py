"""The schema is created and migrated by the program, also by several nodes at once."""

from __future__ import annotations

import asyncio

import pytest

from collector.errors import StartupError
from collector.postgres import Request, SharedLog, connect, create_pool, migrate
from collector.postgres.schema import (
    APPEND_LOCK,
    KEY_CONFLICT_STATE,
    LOCK_SPACE,
    LOG_APPEND,
    LOG_MIGRATIONS,
    schema_version,
)


def test_the_append_function_uses_the_programs_lock_and_error_code() -> None:
    """The SQL text spells them out: it must say what the Python constants say."""
    assert f"pg_advisory_xact_lock({LOCK_SPACE}, {APPEND_LOCK});" in LOG_APPEND
    assert f"USING ERRCODE = '{KEY_CONFLICT_STATE}';" in LOG_APPEND


async def test_nodes_starting_together_migrate_once(pg_dsn: str) -> None:
    conns = [await connect(pg_dsn) for _ in range(3)]
    try:
        assert await schema_version(conns[0], "log") == 0
        versions = await asyncio.gather(*(migrate(conn) for conn in conns))
        assert versions == [LOG_MIGRATIONS[-1].version] * 3
        assert await migrate(conns[0]) == LOG_MIGRATIONS[-1].version  # again: nothing to do
        assert await conns[0].fetchval("SELECT count(*) FROM log_state") == 1
        assert await conns[0].fetchval(
            "SELECT version FROM schema_versions WHERE component = 'log'"
        ) == LOG_MIGRATIONS[-1].version
    finally:
        for conn in conns:
            await conn.close()


async def test_a_schema_newer_than_the_program_is_refused(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        await migrate(conn)
        await conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'log'")
        with pytest.raises(StartupError, match="version 99, newer than this program's"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_groups_in_a_row_get_consecutive_seqs_and_their_keys_answers(
        pg_dsn: str) -> None:
    """The set-based append: two groups in a row (keys, a key repeated in the group, a
    retained key) answer and store as one request at a time would."""

    def group(base: int) -> list[Request]:
        return [Request([b'{"n":%d}' % (base + i) for i in range(3)], 1.0, "a", 10,
                        key=f"k{base}"),
                Request([b'{"n":%d}' % (base + 9)], 2.0, key=f"k{base}"),  # the same key
                Request([b'{"n":%d}' % (base + 7)] * 2, 3.0, "b", None)]

    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        log = SharedLog(pool)
        old = [(a.accepted, a.first_seq, a.last_seq, a.replayed)
               for a in await log.append(group(100))]
        new = [(a.accepted, a.first_seq, a.last_seq, a.replayed)
               for a in await log.append(group(200))]
        again = [(a.accepted, a.first_seq, a.last_seq, a.replayed)
                 for a in await log.append(group(200)[:1])]  # its key is retained now
        jobs = await log.jobs_after(0, 100)
    finally:
        await pool.close()
    assert old == [(3, 1, 3, False), (3, 1, 3, True), (2, 4, 5, False)]
    assert new == [(3, 6, 8, False), (3, 6, 8, True), (2, 9, 10, False)]
    assert again == [(3, 6, 8, True)]
    assert [j.seq for j in jobs] == list(range(1, 11))
    assert [j.payload["n"] for j in jobs] == [100, 101, 102, 107, 107, 200, 201, 202, 207, 207]
    assert [(j.source, j.sequence) for j in jobs[5:8]] == [("a", 10), ("a", 11), ("a", 12)]
