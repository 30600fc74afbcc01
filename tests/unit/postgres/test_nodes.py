"""Real `collector serve` processes on one PostgreSQL: one order, one leader, failover.

Each node is a ServerProcess with COLLECTOR_POSTGRES_DSN and the recorder handler (one
fsynced line per applied job, with the node's pid), behind no load balancer: the tests
post to each node directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.postgres import (
    Cluster,
    Poster,
    check_in_order_at_least_once,
    restart_server,
)
from tests.support.postgres import applied as _applied
from tests.support.postgres import check_once_in_order as _check_once_in_order
from tests.support.postgres import node as _node
from tests.support.postgres import queue_json as _queue
from tests.support.postgres import running as _running
from tests.support.server import wait_until

pytestmark = pytest.mark.slow


async def test_two_nodes_one_order_one_leader(postgres_cluster: Cluster, pg_dsn: str,
                                               tmp_path: Path) -> None:
    """Events posted alternately to two nodes are applied once each, in the order of the
    seqs of their 202s, all by the one leader; the same Idempotency-Key at both nodes at
    once gets one answer."""
    record = tmp_path / "applied.txt"
    nodes = [_node(tmp_path, pg_dsn, f"node{i}", record) for i in range(2)]
    with _running(nodes):
        async with aiohttp.ClientSession() as session:
            poster = Poster(session)
            for burst in range(10):  # ten bursts of concurrent requests at both nodes
                await asyncio.gather(*(poster.post(nodes[(burst + i) % 2]) for i in range(10)))
            assert set(poster.statuses) == {202}
            assert len(poster.acked) == 200
            answers = await asyncio.gather(*(poster.post(node, key="same-key")
                                             for node in nodes))
            assert answers[0] is not None
            assert answers[1] is not None
            assert (answers[0]["first_seq"], answers[0]["last_seq"]) == \
                (answers[1]["first_seq"], answers[1]["last_seq"])
            assert len(poster.acked) == 202  # one of the two stored its events
            await wait_until(lambda: len(_applied(record)) >= len(poster.acked), timeout=30,
                             what="every acknowledged event applied")
            seen = [await _queue(session, node) for node in nodes]
        assert [s["node"] for s in seen] == ["node0", "node1"]
        assert sorted(s["leader"] for s in seen) == [False, True]
        leader = nodes[[s["leader"] for s in seen].index(True)]
        assert leader.proc is not None
        records = _applied(record)
        _check_once_in_order(records, poster.acked)
        assert len(records) == len(poster.acked)  # the repeated key stored nothing
        assert {r.pid for r in records} == {leader.proc.pid}


async def test_leader_killed_another_takes_over(
        postgres_cluster: Cluster, pg_dsn: str, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    """SIGKILL of the leader under load: the other node leads within seconds, and every
    acknowledged event is applied, in order; only the events the dead leader had applied
    after its last committed acknowledgement are applied again (at least once)."""
    record = tmp_path / "applied.txt"
    nodes = [_node(tmp_path, pg_dsn, f"node{i}", record) for i in range(2)]
    with _running(nodes):
        async with aiohttp.ClientSession() as session:
            seen = [await _queue(session, node) for node in nodes]
            old = nodes[[s["leader"] for s in seen].index(True)]
            survivor = nodes[1 - nodes.index(old)]
            assert old.proc is not None
            assert survivor.proc is not None
            poster = Poster(session)
            stop = asyncio.Event()
            load = asyncio.create_task(poster.load(nodes, stop))
            await wait_until(lambda: len(_applied(record)) >= 100, timeout=30,
                             what="the leader applying under load")
            old.kill()
            killed_at = time.monotonic()

            async def survivor_leads() -> bool:
                return bool((await _queue(session, survivor))["leader"])

            await wait_until(survivor_leads, timeout=30, what="the survivor to lead")
            takeover_s = time.monotonic() - killed_at
            await asyncio.sleep(1.0)  # more load on the new leader
            stop.set()
            await load
            await wait_until(lambda: {r.seq for r in _applied(record)} >= set(poster.acked),
                             timeout=30, what="every acknowledged event applied")
        record_property("takeover_s", round(takeover_s, 3))
        records = _applied(record)
        by_old = [r for r in records if r.pid == old.proc.pid]
        by_new = [r for r in records if r.pid == survivor.proc.pid]
        assert by_old
        assert by_new
        assert len(by_old) + len(by_new) == len(records)
        _check_once_in_order(by_old, {s: e for s, e in poster.acked.items()
                                      if s <= by_old[-1].seq})
        _check_once_in_order(by_new, {s: e for s, e in poster.acked.items()
                                      if s >= by_new[0].seq})
        # The new leader starts after the old one's committed mark: what it applies again
        # is a suffix of the old leader's run (the last ack_interval_ms at most), never a
        # gap before it.
        again = [r.seq for r in by_old if r.seq >= by_new[0].seq]
        assert again == [r.seq for r in by_old[len(by_old) - len(again):]]
        assert by_new[0].seq <= by_old[-1].seq + 1, "events skipped at the takeover"
        # Bounded: acknowledgements commit every ack_interval_ms (50 ms), and the old
        # leader had applied 100 or more events before the kill.
        assert len(again) <= len(by_old) // 2, f"{len(again)} of {len(by_old)} applied again"
        record_property("applied_again", f"{len(again)} of {len(records)}")



@pytest.mark.parametrize("restart", [False, True], ids=["stop-wait-start", "restart"])
async def test_postgres_stopped_under_load(own_cluster: Cluster, tmp_path: Path,
                                           restart: bool) -> None:
    """PostgreSQL stopped (immediate) while two nodes take events, then started: either
    after a while (503 with Retry-After, never a 500 or a 202, while it is down), or at
    once (`pg_ctl restart`: every session cut, the leader's included). Then 202s again;
    every acknowledged event is applied, in seq order, stored once; only what the term
    cut short had applied after its last committed acknowledgement is applied again."""
    name = own_cluster.create_database()
    dsn = own_cluster.dsn(name)
    record = tmp_path / "applied.txt"
    nodes = [_node(tmp_path, dsn, f"node{i}", record) for i in range(2)]
    with _running(nodes):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            poster = Poster(session)
            stop = asyncio.Event()
            load = asyncio.create_task(poster.load(nodes, stop))
            await wait_until(lambda: len(poster.acked) >= 100, timeout=30, what="202s")
            down_from = len(poster.statuses)
            acked_down = len(poster.acked)
            if restart:
                await asyncio.to_thread(restart_server, own_cluster, "immediate")
                # The sessions the nodes held died with the server: the requests that
                # meet them get 503s, the next ones new sessions.
                await wait_until(lambda: 503 in poster.statuses[down_from:], timeout=30,
                                 what="a 503 for a request that met a cut session")
                up_from = down_from + poster.statuses[down_from:].index(503) + 1
            else:
                await asyncio.to_thread(own_cluster.stop_server, "immediate")
                await wait_until(lambda: poster.statuses.count(503) >= 20, timeout=30,
                                 what="503s while PostgreSQL is down")
                async with session.get(f"{nodes[0].url}/readyz") as resp:
                    assert resp.status == 503
                    assert "PostgreSQL" in (await resp.json())["detail"]
                acked_down = len(poster.acked)
                up_from = len(poster.statuses)  # answered while down, all before this
                await asyncio.to_thread(own_cluster.start_server)
            await wait_until(lambda: poster.statuses[up_from:].count(202) >= 50, timeout=60,
                             what="202s once PostgreSQL is back")
            stop.set()
            await load
            await wait_until(lambda: {r.seq for r in _applied(record)} >= set(poster.acked),
                             timeout=60, what="every acknowledged event applied")
        statuses = poster.statuses
        assert set(statuses) <= {202, 503}, f"answers: {sorted(set(statuses))}"
        assert poster.retry_after_missing == 0
        assert poster.unanswered == 0, "requests that got no answer (a hang or a reset)"
        if not restart:
            assert 202 not in statuses[down_from + 5:up_from], "a 202 while PostgreSQL was down"
        assert len(poster.acked) > acked_down
        check_in_order_at_least_once(_applied(record), poster.acked)
