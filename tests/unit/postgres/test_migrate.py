"""`collector migrate`: a real SQLite-mode data dir into the suite's real PostgreSQL.

The data dir is made by the daemon's own DurableQueue and StatsStore (the worker's
steps: take, apply, acknowledge; a dead letter, one put back in its old place, a failed
attempt), then migrated; what the PostgreSQL mode then reads is compared with what the
SQLite mode would have done next.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.errors import StartupError
from collector.files import locked_data_dir
from collector.jobs import Job
from collector.postgres import LogReader, Pool, Request, SharedLog, connect, create_pool
from collector.postgres.from_sqlite import MigrateReport, migrate_to
from collector.postgres.schema import LEADER_LOCK, LOCK_SPACE
from collector.postgres.schema import migrate as migrate_log
from collector.postgres.stats import migrate_stats
from collector.queue import Accepted, DeadJob, DurableQueue, inspect_file
from collector.stats.schema import SCHEMA_VERSION
from collector.stats.store import StatsStore
from tests.support.model import cli_env, one_line, run_cli
from tests.support.paths import CAPTURE_JSONL
from tests.support.stats import api

TTL_S = 48 * 3600.0
BATCH = 40  # events per request
APPLIED = 250  # jobs the old worker applied (and acknowledged) before the stop
WAIT_S = 30.0  # a hang guard, not a speed requirement


@dataclass(frozen=True, slots=True)
class Old:
    """What the SQLite mode holds, read back through DurableQueue after the stop."""

    pending: list[Job]  # in the order the worker would take them
    dead: list[DeadJob]
    keys: dict[str, Accepted]
    last_seq: int
    processed_total: int


def capture() -> list[dict[str, Any]]:
    """The recording's 438 messages (one match), as the game sent them."""
    return [json.loads(line) for line in CAPTURE_JSONL.read_text().splitlines()]


def goal(guid: str, scorer: str, team: int, *, time: float) -> dict[str, Any]:
    return api("GoalScored", {"MatchGuid": guid, "GoalSpeed": 80.0, "GoalTime": time,
                              "Scorer": {"Name": scorer, "TeamNum": team},
                              "Assister": {"Name": ""}})


def with_goals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The capture (one match, no goal) with three goals of its two players in the part
    that the old worker applies, in place of three snapshots (438 messages still)."""
    guid = json.loads(messages[100]["Data"])["MatchGuid"]
    for at, (scorer, team, time_s) in zip((120, 160, 200), (("nickm", 0, 40.0),
                                          ("Zone Killa", 1, 75.5), ("nickm", 0, 130.0)),
                                          strict=True):
        messages[at] = goal(guid, scorer, team, time=time_s)
    return messages


async def _take(queue: DurableQueue) -> Job:
    return await asyncio.wait_for(queue.next_job(), timeout=WAIT_S)


async def build_data_dir(data_dir: Path, *, stats: bool) -> Old:
    """A stopped SQLite-mode data dir: the capture's 438 messages in requests of 40 (with
    X-Source, X-Sequence and an Idempotency-Key each); the first 250 applied (to stats.db
    when `stats`) and acknowledged; 251 and 252 dead, 251 put back in its old place and
    failed once more; the rest pending."""
    messages = with_goals(capture())
    queue = DurableQueue(data_dir, ack_interval_ms=0)
    store = StatsStore(data_dir) if stats else None
    await queue.open()
    if store is not None:
        await store.open()
    try:
        for start in range(0, len(messages), BATCH):
            await queue.put(messages[start:start + BATCH], source="PC-1",
                            sequence=1000 + start, key=f"req-{start}",
                            received_at=1_790_000_000.0 + start)
        for _ in range(APPLIED):
            job = await _take(queue)
            if store is not None:
                await store.apply(job)
            queue.ack(job)
        for _ in range(2):
            job = await _take(queue)
            await queue.dead_letter(job, f"refused {job.seq}: a bad message")
        await queue.retry_dead([APPLIED + 1])
        job = await _take(queue)
        assert job.seq == APPLIED + 1
        job.attempt = 1
        await queue.record_attempt(job)
    finally:
        await queue.close()
        if store is not None:
            await store.close()
    # What the SQLite mode would do next: open again and list.
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        pending = [job async for job in queue.pending_jobs()]
        dead = await queue.dead_letters(limit=1000)
        keys = {f"req-{s}": Accepted(min(BATCH, len(messages) - s), s + 1,
                                     s + min(BATCH, len(messages) - s), replayed=True)
                for s in range(0, len(messages), BATCH)}
        last_seq = queue.last_seq
    finally:
        await queue.close()
    return Old(pending, dead, keys, last_seq, inspect_file(data_dir).processed_total)


def sqlite_files(data_dir: Path) -> dict[str, str]:
    """The SQLite files of the data dir and their SHA-256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.iterdir()) if p.name.startswith(("queue.db", "stats.db"))}


async def migrate(data_dir: Path, dsn: str) -> MigrateReport:
    with locked_data_dir(data_dir):
        return await migrate_to(dsn, data_dir, stats_version=SCHEMA_VERSION, key_ttl_s=TTL_S)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[Pool]:
    """A pool on the test's database (what a node would hold)."""
    p = await create_pool(pg_dsn, min_size=1, max_size=2)
    yield p
    await p.close()


async def read_all(log: SharedLog) -> list[Job]:
    """Every job the leader would now take, in the order it takes them."""
    reader = LogReader(log, after=(await log.state()).applied_seq)
    jobs: list[Job] = []
    while page := await reader.take():
        jobs += page
    return jobs


async def test_the_backlog_moves_with_its_seqs_in_order(tmp_path: Path, pg_dsn: str,
                                                         pool: Pool) -> None:
    """Every pending job, revived one first, with its seq, payload, arrival time, X-Source,
    X-Sequence and failed attempts; the dead letters; the keys; the counts; new seqs above
    the old ones; the SQLite files unchanged."""
    data_dir = tmp_path / "data"
    old = await build_data_dir(data_dir, stats=False)
    assert old.pending[0].seq == APPLIED + 1
    assert old.pending[0].attempt == 2
    assert [j.seq for j in old.pending[1:]] == list(range(APPLIED + 3, old.last_seq + 1))
    before = sqlite_files(data_dir)

    report = await migrate(data_dir, pg_dsn)

    assert sqlite_files(data_dir) == before
    log = SharedLog(pool, idempotency_ttl_s=TTL_S)
    assert await read_all(log) == old.pending
    assert await log.dead_letters(limit=1000) == old.dead == [
        DeadJob(APPLIED + 2, old.dead[0].payload, old.dead[0].received_at, "PC-1",
                1000 + APPLIED + 1, 1, f"refused {APPLIED + 2}: a bad message",
                old.dead[0].failed_at)]
    for key, answer in old.keys.items():
        assert await log.known_key(key) == answer, key
    state = await log.state()
    assert state.applied_seq == APPLIED + 2
    assert state.processed_total == old.processed_total == APPLIED
    assert (report.jobs, report.first_seq, report.last_seq, report.dead, report.keys) == (
        len(old.pending), APPLIED + 1, old.last_seq, 1, len(old.keys))
    assert report.next_seq == old.last_seq + 1

    # A new event goes after every old seq, and the leader takes it last.
    [answer] = await log.append([Request([b'{"Event":"new"}'], time.time())])
    assert answer.first_seq == old.last_seq + 1
    # A key the old daemon answered is answered again, not stored twice.
    [again] = await log.append([Request([b"{}"], time.time(), key="req-0")])
    assert again == old.keys["req-0"]
    jobs = await read_all(log)
    assert [j.seq for j in jobs] == [j.seq for j in old.pending] + [old.last_seq + 1]


async def test_a_second_migrate_into_the_same_database_is_refused(
        tmp_path: Path, pg_dsn: str, pool: Pool) -> None:
    data_dir = tmp_path / "data"
    old = await build_data_dir(data_dir, stats=False)
    await migrate(data_dir, pg_dsn)
    with pytest.raises(StartupError, match=r"already holds events .* never merges"):
        await migrate(data_dir, pg_dsn)
    assert await read_all(SharedLog(pool)) == old.pending  # nothing doubled


async def test_a_database_with_events_of_its_own_is_refused(tmp_path: Path, pg_dsn: str,
                                                             pool: Pool) -> None:
    """A database a node already took events into: nothing is merged into it."""
    data_dir = tmp_path / "data"
    await build_data_dir(data_dir, stats=False)
    conn = await connect(pg_dsn)
    try:
        await migrate_log(conn)
    finally:
        await conn.close()
    log = SharedLog(pool)
    await log.append([Request([b"{}"], time.time())])
    with pytest.raises(StartupError, match="already holds events"):
        await migrate(data_dir, pg_dsn)
    assert [j.seq for j in await read_all(log)] == [1]


async def test_a_running_node_on_the_database_is_refused(tmp_path: Path, pg_dsn: str,
                                                          pool: Pool) -> None:
    """A node holding the leader's lock: migrating under it would hand it jobs mid-way."""
    data_dir = tmp_path / "data"
    await build_data_dir(data_dir, stats=False)
    leader = await connect(pg_dsn)
    try:
        assert await leader.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE,
                                     LEADER_LOCK)
        with pytest.raises(StartupError, match="a collector node runs on this PostgreSQL"):
            await migrate(data_dir, pg_dsn)
    finally:
        await leader.close()
    assert await read_all(SharedLog(pool)) == []
    await migrate(data_dir, pg_dsn)  # once the node is gone


async def test_a_failure_half_way_leaves_the_database_empty(tmp_path: Path, pg_dsn: str,
                                                             pool: Pool) -> None:
    """The jobs are copied before the statistics: a statistics table PostgreSQL does not
    have fails the copy after the jobs went in, and the one transaction takes them back."""
    data_dir = tmp_path / "data"
    await build_data_dir(data_dir, stats=False)
    store = StatsStore(data_dir)
    await store.open()
    await store.close()
    conn = sqlite3.connect(data_dir / "stats.db")
    try:
        conn.execute("CREATE TABLE unknown_to_postgres (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO unknown_to_postgres VALUES (1)")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StartupError, match="PostgreSQL has no statistics table "
                                           "unknown_to_postgres"):
        await migrate(data_dir, pg_dsn)
    log = SharedLog(pool)
    assert await read_all(log) == []
    assert await log.dead_count() == 0
    assert await log.last_seq() == 0
    # As the schema starts it:
    assert await postgres_rows(pool, "applied", ("id", "last_seq")) == [(1, 0)]


# -- the statistics -------------------------------------------------------------------------


def sqlite_tables(data_dir: Path) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Every table of stats.db but its own version: (columns, rows)."""
    conn = sqlite3.connect(f"file:{data_dir / 'stats.db'}?mode=ro", uri=True)
    try:
        names = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'schema_version'")]
        found = {}
        for name in names:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM {name}").fetchall()  # noqa: S608
            found[name] = (columns, sorted(rows, key=repr))
        return found
    finally:
        conn.close()


async def postgres_rows(pool: Pool, table: str, columns: Sequence[str]
                        ) -> list[tuple[Any, ...]]:
    """`columns` of every row of a PostgreSQL table, sorted like sqlite_tables'."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT {', '.join(columns)} FROM {table}")  # noqa: S608
    return sorted((tuple(r[i] for i in range(len(columns))) for r in rows), key=repr)


async def test_the_statistics_move_table_by_table(tmp_path: Path, pg_dsn: str,
                                                  pool: Pool) -> None:
    """Every table of stats.db, row for row and value for value, in PostgreSQL's table of
    the same name; new ids above the old ones; new seqs above what the statistics saw."""
    data_dir = tmp_path / "data"
    old = await build_data_dir(data_dir, stats=True)
    tables = sqlite_tables(data_dir)
    assert tables["matches"][1], "the capture's match is in stats.db"
    assert tables["goals"][1], "and its goals"
    assert tables["match_engine"][1] or tables["match_players"][1]
    before = sqlite_files(data_dir)

    report = await migrate(data_dir, pg_dsn)

    assert sqlite_files(data_dir) == before
    for name, (columns, rows) in tables.items():
        assert await postgres_rows(pool, name, columns) == rows, name
    assert report.matches == len(tables["matches"][1])
    assert report.players == len(tables["players"][1])
    assert report.stats_rows == sum(len(rows) for _c, rows in tables.values())
    assert await read_all(SharedLog(pool)) == old.pending
    async with pool.acquire() as conn:
        for table in ("matches", "players", "goals"):
            highest = max(row[0] for row in tables[table][1])
            assert await conn.fetchval(
                f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))") > highest, table
        # A new player row (what the stats store inserts) takes the next id, no collision.
        new_id = await conn.fetchval(
            "INSERT INTO players (key, name, last_seq) VALUES ('new', 'New', $1) "
            "RETURNING id", old.last_seq + 1)
        assert new_id > max(row[0] for row in tables["players"][1])


async def test_new_seqs_start_above_what_the_statistics_applied(tmp_path: Path, pg_dsn: str,
                                                                pool: Pool) -> None:
    """stats.db alone (its queue.db gone): the next event must not get a seq the stats
    store remembers as applied (it would be taken for a replay and skipped)."""
    data_dir = tmp_path / "data"
    store = StatsStore(data_dir)
    await store.open()
    try:
        for i, message in enumerate(capture()[:APPLIED], start=1):
            await store.apply(Job(i, message, 1_790_000_000.0 + i))
    finally:
        await store.close()
    assert not (data_dir / "queue.db").exists()

    report = await migrate(data_dir, pg_dsn)

    assert (report.jobs, report.next_seq, report.applied_seq) == (0, APPLIED + 1, APPLIED)
    assert report.matches == 1
    log = SharedLog(pool)
    [answer] = await log.append([Request([b"{}"], time.time())])
    assert answer.first_seq == APPLIED + 1
    assert await postgres_rows(pool, "applied", ("id", "last_seq")) == [(1, APPLIED)]


async def test_a_database_with_statistics_of_its_own_is_refused(
        tmp_path: Path, pg_dsn: str, pool: Pool) -> None:
    data_dir = tmp_path / "data"
    await build_data_dir(data_dir, stats=True)
    conn = await connect(pg_dsn)
    try:
        await migrate_log(conn)
        await migrate_stats(conn)
        await conn.execute("UPDATE counters SET value = 3 WHERE name = 'stale_skipped'")
    finally:
        await conn.close()
    with pytest.raises(StartupError, match=r"already holds statistics \(table counters"):
        await migrate(data_dir, pg_dsn)
    assert await read_all(SharedLog(pool)) == []
    assert await postgres_rows(pool, "matches", ("id",)) == []


async def test_a_database_whose_nodes_started_but_took_nothing_is_used(
        tmp_path: Path, pg_dsn: str, pool: Pool) -> None:
    """The schemas created, their starting rows only: empty, so the copy goes ahead."""
    data_dir = tmp_path / "data"
    old = await build_data_dir(data_dir, stats=True)
    conn = await connect(pg_dsn)
    try:
        await migrate_log(conn)
        await migrate_stats(conn)
    finally:
        await conn.close()
    await migrate(data_dir, pg_dsn)
    assert await read_all(SharedLog(pool)) == old.pending
    counters = sqlite_tables(data_dir)["counters"][1]
    assert await postgres_rows(pool, "counters", ("name", "value")) == counters


def test_an_old_stats_schema_asks_for_one_start_of_the_daemon(tmp_path: Path,
                                                              pg_dsn: str) -> None:
    data_dir = tmp_path / "data"
    asyncio.run(build_data_dir(data_dir, stats=True))
    conn = sqlite3.connect(data_dir / "stats.db")
    try:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION - 1,))
        conn.commit()
    finally:
        conn.close()
    done = run_cli("migrate", "--data-dir", str(data_dir), "--dsn", pg_dsn, cwd=tmp_path)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"stats.db is at schema version {SCHEMA_VERSION - 1}, this program copies " \
           f"version {SCHEMA_VERSION}: start the daemon once in the SQLite mode" in line


# -- the command ----------------------------------------------------------------------------


def test_the_command_migrates_and_says_what_it_did(tmp_path: Path, pg_dsn: str) -> None:
    """`collector migrate` with the DSN from COLLECTOR_POSTGRES_DSN: two lines, exit 0;
    run again: refused in one line."""
    data_dir = tmp_path / "data"
    old = asyncio.run(build_data_dir(data_dir, stats=False))
    env = cli_env(COLLECTOR_POSTGRES_DSN=pg_dsn)
    done = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith(f"migrated {data_dir} into ")
    assert (f": {len(old.pending)} pending jobs (seqs {APPLIED + 1}-{old.last_seq}), 1 dead "
            f"letter, {len(old.keys)} Idempotency-Keys, 0 matches, 0 players (0 statistics "
            "rows)") in lines[0]
    assert f"new events start at seq {old.last_seq + 1}" in lines[0]
    assert f"move {data_dir} aside" in lines[1]

    again = run_cli("migrate", "--data-dir", str(data_dir), cwd=tmp_path, env=env)
    assert again.returncode == 1
    assert one_line(again.stderr).startswith(
        "collector: error: the PostgreSQL database already holds events")


def test_a_running_daemon_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    """The data dir's lock: while a daemon runs on it, nothing is read or copied."""
    from tests.support.server import ServerProcess

    data_dir = tmp_path / "data"
    asyncio.run(build_data_dir(data_dir, stats=False))
    server = ServerProcess(data_dir)
    server.start()
    try:
        held = run_cli("migrate", "--data-dir", str(data_dir), "--dsn", pg_dsn, cwd=tmp_path)
    finally:
        assert server.terminate() == 0
    assert held.returncode == 1
    line = one_line(held.stderr)
    assert line.startswith("collector: error: ")
    assert line.endswith(": stop the daemon first")


@pytest.mark.parametrize(("dsn", "code", "start"), [
    ("postgresql://collector:secret@127.0.0.1:1/nothing", 1,
     "collector: error: cannot connect to PostgreSQL at "
     "postgresql://collector:***@127.0.0.1:1/nothing: "),
    ("mysql://collector@127.0.0.1/x", 2, "collector migrate: error: argument --dsn: "),
])
def test_a_wrong_dsn_is_one_line(tmp_path: Path, dsn: str, code: int, start: str) -> None:
    data_dir = tmp_path / "data"
    asyncio.run(build_data_dir(data_dir, stats=False))
    done = run_cli("migrate", "--data-dir", str(data_dir), "--dsn", dsn, cwd=tmp_path)
    assert done.returncode == code
    line = one_line(done.stderr)
    assert line.startswith(start), line
    assert "secret" not in line


def test_a_database_that_does_not_exist_is_one_line(tmp_path: Path, pg_dsn: str) -> None:
    data_dir = tmp_path / "data"
    asyncio.run(build_data_dir(data_dir, stats=False))
    dsn = pg_dsn.rsplit("/", 1)[0] + "/no_such_database"
    done = run_cli("migrate", "--data-dir", str(data_dir), "--dsn", dsn, cwd=tmp_path)
    assert done.returncode == 1
    assert 'database "no_such_database" does not exist' in one_line(done.stderr)


def test_no_dsn_and_nothing_to_migrate_are_one_line(tmp_path: Path, pg_dsn: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("migrate", "--data-dir", str(empty), cwd=tmp_path)
    assert none.returncode == 2
    assert one_line(none.stderr).startswith("collector: error: no PostgreSQL to migrate into")
    nothing = run_cli("migrate", "--data-dir", str(empty), "--dsn", pg_dsn, cwd=tmp_path)
    assert nothing.returncode == 1
    assert one_line(nothing.stderr) == (
        f"collector: error: no queue.db or stats.db in {empty}: nothing to migrate")
