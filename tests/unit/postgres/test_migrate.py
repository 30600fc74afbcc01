"""`collector migrate`: a real SQLite-mode data dir into the suite's real PostgreSQL.

The data dir is made by the daemon's own DurableQueue and StatsStore (the worker's
steps: take, apply, acknowledge; a dead letter, one put back in its old place, a failed
attempt), then migrated; what the PostgreSQL mode then reads is compared with what the
SQLite mode would have done next.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.errors import StartupError
from collector.files import locked_data_dir
from collector.jobs import Job
from collector.postgres import LogReader, Pool, Request, SharedLog, connect, create_pool
from collector.postgres.from_sqlite import MigrateReport, migrate_to
from collector.postgres.schema import LEADER_LOCK, LOCK_SPACE
from collector.postgres.schema import migrate as migrate_log
from collector.queue import Accepted, DeadJob, DurableQueue, inspect_file
from collector.stats.schema import SCHEMA_VERSION
from collector.stats.store import StatsStore
from tests.support.model import cli_env, one_line, run_cli
from tests.unit.stats.test_stats import capture

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


async def _take(queue: DurableQueue) -> Job:
    return await asyncio.wait_for(queue.next_job(), timeout=WAIT_S)


async def build_data_dir(data_dir: Path, *, stats: bool) -> Old:
    """A stopped SQLite-mode data dir: the capture's 438 messages in requests of 40 (with
    X-Source, X-Sequence and an Idempotency-Key each); the first 250 applied (to stats.db
    when `stats`) and acknowledged; 251 and 252 dead, 251 put back in its old place and
    failed once more; the rest pending."""
    messages = capture()
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
    extra = data_dir / "stats.db"
    import sqlite3

    conn = sqlite3.connect(extra)
    try:
        conn.execute("CREATE TABLE unknown_to_postgres (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO unknown_to_postgres VALUES (1)")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StartupError, match="PostgreSQL has no statistics table "):
        await migrate(data_dir, pg_dsn)
    log = SharedLog(pool)
    assert await read_all(log) == []
    assert await log.dead_count() == 0
    assert await log.last_seq() == 0


# -- the command ----------------------------------------------------------------------------


def test_the_command_migrates_and_says_what_it_did(tmp_path: Path, pg_dsn: str) -> None:
    """`collector migrate` with the DSN from COLLECTOR_POSTGRES_DSN (the default handler
    list does not stand in its way): two lines, exit 0; run again: refused in one line."""
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
            f"letters, {len(old.keys)} Idempotency-Keys, 0 matches, 0 players") in lines[0]
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
