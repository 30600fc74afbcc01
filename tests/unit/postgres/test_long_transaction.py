"""A long-open transaction beside two real nodes under load (issue 20).

The design's locks (collector/postgres/log.py, leader.py): the append lock (an advisory
transaction lock inside `log_append`, never taken by a reader), the leader's session
lock, and row locks: the state row `log_state` (every settling write locks it with its
epoch, the fence; a new leader's epoch increment too), the log rows an acknowledgement
deletes, and the dead letters a retry takes. The reads that ingest, `/v1/queue` and the
leader's reader make take none of them.

So a session idle in a transaction that only read the log stalls nothing (the reader
reads `seq > mark` in seq order, not below the oldest transaction). A session holding
the fence row, or rows of the log the leader is about to delete, stalls only the
leader's acknowledgements: ingest still answers 202, the handlers still run (the worker
does not wait for its acknowledgements), and once the lock goes, the committed mark
catches up. The `stats` handler fences each of its own commits on the state row too:
under it, the fence row held stops the worker (not ingest) until the row goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.postgres import Connection, connect
from tests.support import synthetic
from tests.support.postgres import (
    Cluster,
    Poster,
    applied,
    check_once_in_order,
    node,
    queue_json,
    running,
)
from tests.support.server import ServerProcess, wait_until

pytestmark = pytest.mark.slow

#: How long the transaction stays open at least, beyond the progress it waits for.
_HOLD_S = 3.0


@contextlib.asynccontextmanager
async def _session(dsn: str) -> AsyncIterator[Connection]:
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _mark(conn: Connection) -> int:
    """The committed apply mark."""
    return int(await conn.fetchval("SELECT applied_seq FROM log_state WHERE id = 1"))


async def _mark_at_least(conn: Connection, seq: int) -> bool:
    return await _mark(conn) >= seq


async def _state(conn: Connection, pid: int) -> str:
    """What pg_stat_activity says the session `pid` is doing."""
    return str(await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid))


async def _leader(session: aiohttp.ClientSession, nodes: list[ServerProcess]
                  ) -> ServerProcess:
    seen = [await queue_json(session, one) for one in nodes]
    assert sorted(s["leader"] for s in seen) == [False, True]
    return nodes[[s["leader"] for s in seen].index(True)]


def _top(record: Path) -> int:
    """The highest seq the handlers applied so far (0 before any)."""
    return max((r.seq for r in applied(record)), default=0)


async def test_idle_in_transaction_stalls_nothing(postgres_cluster: Cluster, pg_dsn: str,
                                                  tmp_path: Path) -> None:
    """A session idle in a REPEATABLE READ transaction that read the log and its state:
    while it is open, ingest answers 202 and the leader applies and commits (the mark
    passes everything acknowledged after it opened); nothing stalls after it ends;
    every acknowledged event is applied once, in seq order."""
    record = tmp_path / "applied.txt"
    nodes = [node(tmp_path, pg_dsn, f"node{i}", record) for i in range(2)]
    with running(nodes):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                _session(pg_dsn) as reader, _session(pg_dsn) as watcher:
            poster = Poster(session)
            stop = asyncio.Event()
            load = asyncio.create_task(poster.load(nodes, stop))
            await wait_until(lambda: len(poster.acked) >= 50, timeout=30, what="202s")
            await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            seen_then = int(await reader.fetchval("SELECT count(*) FROM log"))
            await reader.fetchrow("SELECT applied_seq, epoch FROM log_state WHERE id = 1")
            opened = len(poster.statuses)
            await asyncio.sleep(_HOLD_S)
            acked_open = max(poster.acked)
            await wait_until(lambda: poster.statuses[opened:].count(202) >= 100, timeout=30,
                             what="202s while the transaction is open")

            async def mark_passed() -> bool:
                return await _mark(watcher) >= acked_open

            await wait_until(mark_passed, timeout=30,
                             what="the committed mark passing what was acknowledged while "
                                  "the transaction was open")
            assert await _state(watcher, reader.get_server_pid()) == "idle in transaction"
            # Its snapshot is still the old one: it really was open all along.
            assert int(await reader.fetchval("SELECT count(*) FROM log")) == seen_then
            answered_open = poster.statuses[opened:]
            await reader.execute("ROLLBACK")
            ended = len(poster.statuses)
            await wait_until(lambda: poster.statuses[ended:].count(202) >= 50, timeout=30,
                             what="202s after the transaction ended")
            stop.set()
            await load
            await wait_until(lambda: {r.seq for r in applied(record)} >= set(poster.acked),
                             timeout=30, what="every acknowledged event applied")
            await wait_until(lambda: _mark_at_least(watcher, max(poster.acked)), timeout=30,
                             what="the committed mark at the last acknowledged seq")
        assert set(answered_open) == {202}, f"answers while open: {sorted(set(answered_open))}"
        assert set(poster.statuses) == {202}
        assert poster.unanswered == 0
        check_once_in_order(applied(record), poster.acked)


@pytest.mark.parametrize("lock", [
    # The fence: what every settling write of the leader locks first.
    "SELECT applied_seq FROM log_state WHERE id = 1 FOR UPDATE",
    # The log rows past the mark, which the leader's next acknowledgement deletes.
    "SELECT seq FROM log WHERE seq > (SELECT applied_seq FROM log_state) FOR SHARE",
], ids=["fence-row", "log-rows"])
async def test_locked_rows_stall_only_the_acknowledgements(
        postgres_cluster: Cluster, pg_dsn: str, tmp_path: Path, lock: str) -> None:
    """A session holding rows the leader's acknowledgement must lock, for longer than a
    settling write's timeout: ingest still answers 202 and /v1/queue 200, the handlers
    keep applying, only the committed mark waits (the leader logs the failed commit and
    tries again); once the lock goes, the same leader commits everything, nothing is
    applied twice or out of order."""
    record = tmp_path / "applied.txt"
    nodes = [node(tmp_path, pg_dsn, f"node{i}", record) for i in range(2)]
    with running(nodes):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                _session(pg_dsn) as holder, _session(pg_dsn) as watcher:
            leader = await _leader(session, nodes)
            poster = Poster(session)
            stop = asyncio.Event()
            load = asyncio.create_task(poster.load(nodes, stop))
            await wait_until(lambda: len(poster.acked) >= 50, timeout=30, what="202s")
            await holder.execute("BEGIN")

            async def locked() -> bool:  # rows past the mark: there are some under load
                return bool(await holder.fetch(lock))

            await wait_until(locked, timeout=30, what="rows to lock")
            opened = len(poster.statuses)
            acked_then = max(poster.acked)
            mark_then = await _mark(watcher)
            # The leader's acknowledgement waits on the lock until its timeout (5 s),
            # says so, and tries again.
            await wait_until(lambda: "ack_commit_failed" in leader.output(), timeout=30,
                             what="the leader's acknowledgement timing out on the lock")
            # The acknowledgements of many jobs: the warning names none of them (the task
            # does not carry the context of the job whose ack started it).
            warned = [json.loads(line) for line in leader.output().splitlines()
                      if '"ack_commit_failed"' in line]
            assert warned
            assert not [w for w in warned if "seq" in w], warned
            await wait_until(lambda: _top(record) > acked_then + 100
                             and poster.statuses[opened:].count(202) >= 100, timeout=30,
                             what="202s and the handlers applying while the rows are held")
            answered_held = poster.statuses[opened:]
            assert (await queue_json(session, nodes[0]))["last_seq"] >= max(poster.acked)
            assert await _mark(watcher) == mark_then, "the mark moved past a held lock"
            assert await _state(watcher, holder.get_server_pid()) == "idle in transaction"
            acked_held = max(poster.acked)
            await holder.execute("ROLLBACK")
            await wait_until(lambda: _mark_at_least(watcher, acked_held), timeout=30,
                             what="the committed mark catching up once the lock went")
            ended = len(poster.statuses)
            await wait_until(lambda: poster.statuses[ended:].count(202) >= 50, timeout=30,
                             what="202s after the lock went")
            stop.set()
            await load
            await wait_until(lambda: _mark_at_least(watcher, max(poster.acked)), timeout=30,
                             what="the committed mark at the last acknowledged seq")
            assert await _leader(session, nodes) is leader
        assert set(answered_held) == {202}, f"answers while held: {sorted(set(answered_held))}"
        assert set(poster.statuses) == {202}
        assert poster.unanswered == 0
        records = applied(record)
        assert leader.proc is not None
        assert {r.pid for r in records} == {leader.proc.pid}
        check_once_in_order(records, poster.acked)


async def test_fence_row_held_under_the_stats_handler(postgres_cluster: Cluster, pg_dsn: str,
                                                       tmp_path: Path) -> None:
    """The default handler, `stats`, fences each of its commits on the same state row: a
    session holding that row stops the leader's worker at the next write of statistics,
    not ingest (202s from both nodes meanwhile); once the row goes, the worker resumes
    and the match is in the statistics, each event applied once, in seq order."""
    record = tmp_path / "applied.txt"
    handlers = ["--handler", "stats", "--handler", "tests.support.recorder:record"]
    nodes = [node(tmp_path, pg_dsn, f"node{i}", record, args=handlers) for i in range(2)]
    messages = synthetic.scripted_match(30)
    half = len(messages) // 2
    with running(nodes):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                _session(pg_dsn) as holder, _session(pg_dsn) as watcher:
            acked: dict[int, str] = {}
            statuses: list[int] = []

            async def post(events: list[dict[str, Any]], server: ServerProcess) -> None:
                async with session.post(f"{server.url}/v1/events", json=events) as resp:
                    statuses.append(resp.status)
                    body = await resp.json()
                if resp.status == 202:
                    acked.update((s, "-") for s in range(body["first_seq"],
                                                         body["last_seq"] + 1))

            for turn, first in enumerate(range(0, half, 20)):
                await post(messages[first:min(first + 20, half)], nodes[turn % 2])
            await wait_until(lambda: {r.seq for r in applied(record)} >= set(acked),
                             timeout=30, what="the first half applied")
            await holder.execute("BEGIN")
            assert await holder.fetch("SELECT epoch FROM log_state WHERE id = 1 FOR UPDATE")
            held_from = len(statuses)
            for turn, first in enumerate(range(half, len(messages), 20)):
                await post(messages[first:first + 20], nodes[turn % 2])
            answered_held = statuses[held_from:]

            async def stats_waiting() -> bool:  # the statistics' fence, behind the holder
                return bool(await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
                    " AND query LIKE 'SELECT epoch FROM log_state%'", holder.get_server_pid()))

            await wait_until(stats_waiting, timeout=30,
                             what="the stats handler's commit waiting on the held row")
            await asyncio.sleep(_HOLD_S)
            assert await stats_waiting()
            assert not {r.seq for r in applied(record)} >= set(acked)  # the worker waits
            assert await _state(watcher, holder.get_server_pid()) == "idle in transaction"
            await holder.execute("ROLLBACK")
            await wait_until(lambda: {r.seq for r in applied(record)} >= set(acked),
                             timeout=30, what="every event applied once the row went")
            await wait_until(lambda: _mark_at_least(watcher, max(acked)), timeout=30,
                             what="the committed mark at the last event")
            async with session.get(f"{nodes[0].url}/v1/matches") as resp:
                assert resp.status == 200
                matches = (await resp.json())["matches"]
        assert set(answered_held) == {202}, f"answers while held: {sorted(set(answered_held))}"
        assert len(matches) == 1
        records = applied(record)
        assert [r.seq for r in records] == sorted(acked)
