"""The append: all or nothing, Idempotency-Keys exact across nodes, the numbers."""

from __future__ import annotations

import asyncio

import pytest

from collector.postgres import Connection, KeyConflictError, Request, SharedLog, connect
from collector.postgres.db import CONNECTION_ERRORS
from collector.postgres.log import key_digest
from collector.postgres.schema import APPEND_LOCK, LOCK_SPACE
from tests.support.postgres import PoolFactory


def _events(*ns: int) -> list[bytes]:
    return [b'{"n":%d}' % n for n in ns]


async def _count(log_pool: SharedLog, dsn: str, table: str) -> int:
    conn = await connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    finally:
        await conn.close()


async def test_a_group_commit_gives_each_request_its_consecutive_seqs(
        make_pool: PoolFactory) -> None:
    log = SharedLog(await make_pool())
    answers = await log.append([Request(_events(1, 2, 3), 1.0, "a", 10),
                                Request(_events(4), 2.0)])
    assert [(a.accepted, a.first_seq, a.last_seq, a.replayed) for a in answers] == [
        (3, 1, 3, False), (1, 4, 4, False)]
    jobs = await log.jobs_after(0, 10)
    assert [(j.seq, j.payload, j.received_at, j.attempt, j.source, j.sequence)
            for j in jobs] == [(1, {"n": 1}, 1.0, 1, "a", 10), (2, {"n": 2}, 1.0, 1, "a", 11),
                               (3, {"n": 3}, 1.0, 1, "a", 12), (4, {"n": 4}, 2.0, 1, None, None)]
    assert await log.pending() == 4
    assert await log.backlog() == 4
    assert await log.last_seq() == 4
    assert await log.oldest_received_at() == 1.0


async def test_the_append_commits_with_synchronous_commit_on(
        make_pool: PoolFactory, pg_dsn: str) -> None:
    """Even when the database's default says off, the append's own transaction says on."""
    conn = await connect(pg_dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        async with conn.transaction():
            await SharedLog(await make_pool())._append(conn, [Request(_events(1), 1.0)])
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()


async def _wait_for_lock_wait(conn: Connection) -> int:
    """The pid of the session that waits on another transaction (a unique-index check)."""
    for _ in range(500):
        pid = await conn.fetchval("SELECT pid FROM pg_locks WHERE NOT granted "
                                  "AND locktype = 'transactionid' LIMIT 1")
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the append never waited")


@pytest.mark.parametrize("failure", ["key stored meanwhile", "session killed"])
async def test_a_batch_that_fails_half_way_leaves_nothing(
        make_pool: PoolFactory, pg_dsn: str, failure: str) -> None:
    """A group of three requests fails at its last statement, after its seqs were taken
    and its events inserted: it waits on a key that another session is storing, which
    then commits (the unique backstop) or the append's own session is killed. Nothing of
    any of the three requests is left, and the next append goes through."""
    log = SharedLog(await make_pool())
    gate = await connect(pg_dsn)
    try:
        await gate.execute("BEGIN")
        await gate.execute("INSERT INTO log_keys (digest, first_seq, last_seq, accepted, "
                           "created_at) VALUES ($1, 100, 100, 1, log_now())",
                           key_digest("contested"))
        appending = asyncio.create_task(log.append([
            Request(_events(1, 2), 1.0, key="mine"), Request(_events(3), 1.0),
            Request(_events(4), 1.0, key="contested")]))
        pid = await _wait_for_lock_wait(gate)
        assert await gate.fetchval("SELECT last_value FROM log_seq") == 4  # seqs taken
        if failure == "session killed":
            assert await gate.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(CONNECTION_ERRORS):
                await appending
            await gate.execute("ROLLBACK")
        else:
            await gate.execute("COMMIT")  # the contested key is stored meanwhile
            with pytest.raises(KeyConflictError):
                await appending
    finally:
        await gate.close()
    assert await log.jobs_after(0, 100) == []
    assert await log.pending() == 0
    assert await _count(log, pg_dsn, "log_keys") == (1 if failure == "key stored meanwhile"
                                                     else 0)
    # The lock went with the transaction, and the key "mine" was not kept.
    again = await asyncio.wait_for(log.append([Request(_events(5), 1.0, key="mine")]), 10)
    assert (again[0].replayed, again[0].first_seq) == (False, 5)  # 1..4 are a gap
    assert [j.payload for j in await log.jobs_after(0, 100)] == [{"n": 5}]


async def test_a_repeated_key_answers_the_first_answer_and_stores_nothing(
        make_pool: PoolFactory) -> None:
    log = SharedLog(await make_pool())
    long_key = "k" * 8000  # what aiohttp lets through in a header: fits (stored hashed)
    first = (await log.append([Request(_events(1, 2), 1.0, key=long_key)]))[0]
    later = await log.append([Request(_events(7, 8, 9), 2.0, key=long_key),
                              Request(_events(3), 2.0, key="other"),
                              Request(_events(4), 2.0, key="other")])
    assert (later[0].accepted, later[0].first_seq, later[0].last_seq, later[0].replayed) == (
        first.accepted, first.first_seq, first.last_seq, True)
    # The same key twice in one group commit: the second gets the first's answer.
    assert later[1].replayed is False
    assert (later[2].first_seq, later[2].last_seq, later[2].replayed) == (
        later[1].first_seq, later[1].last_seq, True)
    assert [j.payload for j in await log.jobs_after(0, 100)] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_an_expired_key_is_stored_again(make_pool: PoolFactory) -> None:
    log = SharedLog(await make_pool(), idempotency_ttl_s=0.0)
    first = (await log.append([Request(_events(1), 1.0, key="k")]))[0]
    second = (await log.append([Request(_events(2), 1.0, key="k")]))[0]
    assert (second.replayed, second.first_seq) == (False, first.first_seq + 1)
    assert await log.purge_keys() == 1


async def test_the_same_key_at_two_nodes_at_the_same_instant(
        make_pool: PoolFactory, pg_dsn: str) -> None:
    """Both appends are in flight together (both wait on the append lock, held here),
    then race: one set of rows, both answers name the same seqs."""
    node_a = SharedLog(await make_pool(max_size=1))
    node_b = SharedLog(await make_pool(max_size=1))
    await node_a.append([Request(_events(0), 0.0)])  # seq 1, so that seqs are not trivial
    gate = await connect(pg_dsn)
    try:
        async with gate.transaction():
            await gate.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, APPEND_LOCK)
            racing = [asyncio.create_task(log.append([Request(_events(1, 2, 3), 1.0,
                                                              key="same")]))
                      for log in (node_a, node_b)]
            for _ in range(500):  # until both sessions wait on the lock
                waiting = await gate.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND classid = $1 AND objid = $2", LOCK_SPACE, APPEND_LOCK)
                if waiting == 2:
                    break
                await asyncio.sleep(0.01)
            assert waiting == 2
        a, b = [(await task)[0] for task in racing]
    finally:
        await gate.close()
    assert (a.first_seq, a.last_seq, a.accepted) == (b.first_seq, b.last_seq, b.accepted) == (
        2, 4, 3)
    assert sorted([a.replayed, b.replayed]) == [False, True]
    assert [j.seq for j in await node_a.jobs_after(0, 100)] == [1, 2, 3, 4]
    assert await _count(node_a, pg_dsn, "log_keys") == 1


async def test_the_same_keys_at_four_nodes_many_times(make_pool: PoolFactory) -> None:
    """Unscripted races: each round, four nodes append the same key at once."""
    nodes = [SharedLog(await make_pool(max_size=1)) for _ in range(4)]
    for round_ in range(30):
        answers = await asyncio.gather(*(
            log.append([Request(_events(round_, round_), 1.0, key=f"k{round_}")])
            for log in nodes))
        spans = {(a[0].first_seq, a[0].last_seq) for a in answers}
        assert len(spans) == 1
        assert sum(not a[0].replayed for a in answers) == 1
    assert await nodes[0].pending() == 60
