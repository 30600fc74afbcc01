"""The schema is created and migrated by the program, also by several nodes at once."""

from __future__ import annotations

import asyncio

import pytest

from collector.errors import StartupError
from collector.postgres import connect, migrate
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
            "SELECT version FROM schema_versions WHERE component = 'log'") == 1
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
