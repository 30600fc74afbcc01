"""The statistics on PostgreSQL: fenced on the leader's epoch, the same figures from any
node as one SQLite node gives, applied once across a leader killed with SIGKILL, and a
follower's live feed following what the leader applied.

The store-level suites (tests/unit/stats, tests/unit/server) already run on PostgreSQL
(both_backends); these are what only several nodes on one database have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.jobs import Job
from collector.postgres import FencedError, connect, migrate
from collector.postgres.stats import PostgresStats
from collector.stats.store import StatsStore
from tests.support.paths import CAPTURE_JSONL, REPO
from tests.support.postgres import Cluster, queue_json, running
from tests.support.server import ServerProcess, wait_until
from tests.support.stats import GUID, rows, update

WAIT_S = 60.0  # a hang guard, not a speed requirement
BATCH = 20  # events per request


async def _set_epoch(dsn: str, epoch: int) -> None:
    """What a new leader's term does to the state row (collector.postgres.leader)."""
    conn = await connect(dsn)
    try:
        await conn.execute("UPDATE log_state SET epoch = $1 WHERE id = 1", epoch)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _store(tmp_path: Path, dsn: str, epoch: list[int]) -> AsyncIterator[StatsStore]:
    """A store on `dsn` whose node believes it leads in the term epoch[0]."""
    store = StatsStore(tmp_path / f"data-{id(epoch)}", shared=PostgresStats(
        dsn, "test", epoch=lambda: epoch[0]))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _snapshot(seq: int, score: int) -> Job:
    return Job(seq=seq, payload=update(GUID, [("A", "Steam|1|0", 0, score, 0)]),
               received_at=1_790_000_000.0 + seq)


async def test_a_deposed_leader_cannot_write_statistics(tmp_path: Path, pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    await _set_epoch(pg_dsn, 1)
    async with _store(tmp_path, pg_dsn, [1]) as old, _store(tmp_path, pg_dsn, [2]) as new:
        assert await old.apply(_snapshot(1, 100)) == "applied"
        await _set_epoch(pg_dsn, 2)  # another node took over
        with pytest.raises(FencedError):
            await old.apply(_snapshot(2, 200))
        # Nothing of the refused transaction: the line and the mark are the first job's.
        assert await rows(old, "SELECT score FROM match_players") == [(100,)]
        assert await rows(old, "SELECT last_seq FROM applied") == [(1,)]
        assert await new.apply(_snapshot(2, 200)) == "applied"
        assert await rows(new, "SELECT score, updated_seq FROM match_players") == [(200, 2)]
        with pytest.raises(FencedError):  # nor can it close idle matches
            await old.close_idle(0.0)
        assert await rows(new, "SELECT ended_at FROM matches") == [(None,)]


# -- several real nodes ----------------------------------------------------------------------


def _batches() -> list[bytes]:
    lines = CAPTURE_JSONL.read_bytes().splitlines()
    return [b"\n".join(lines[i:i + BATCH]) + b"\n" for i in range(0, len(lines), BATCH)]


async def _post(session: aiohttp.ClientSession, server: ServerProcess, body: bytes,
                sequence: int) -> bool:
    """One batch with its X-Sequence; False when the node did not take it (killed,
    stopping, or not ready), True on a 202."""
    headers = {"Content-Type": "application/x-ndjson", "X-Source": "bridge",
               "X-Sequence": str(sequence)}
    try:
        async with session.post(f"{server.url}/v1/events", data=body,
                                headers=headers) as resp:
            return resp.status == 202
    except (aiohttp.ClientConnectionError, TimeoutError):
        return False


async def _drained(session: aiohttp.ClientSession, server: ServerProcess, total: int) -> None:
    async def done() -> bool:
        q = await queue_json(session, server)
        return bool(q["last_seq"] >= total and q["pending"] == 0 and q["in_flight"] == 0
                    and q["leader"])

    await wait_until(done, timeout=WAIT_S, what=f"{server.url} applied every event")


async def _match(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with session.get(f"{server.url}/v1/matches") as resp:
        page = await resp.json()
    (one,) = page["matches"]
    async with session.get(f"{server.url}/v1/matches/{one['id']}") as resp:
        assert resp.status == 200
        match: dict[str, Any] = await resp.json()
        return match


#: Row ids (a failover may use up identity values, a rolled back insert, where one SQLite
#: node did not) and arrival times (the two runs post at other moments).
_UNCOMPARED = frozenset({"id", "player_id", "scorer_id", "started_at", "ended_at",
                         "last_event_at", "received_at"})


def _comparable(value: Any) -> Any:
    """A document without what may differ between the two runs; nothing else may."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in _UNCOMPARED}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


async def _reference(tmp_path: Path, session: aiohttp.ClientSession,
                     batches: list[bytes]) -> dict[str, Any]:
    """The same requests, in the same order, to one SQLite-mode node."""
    (tmp_path / "sqlite").mkdir()
    server = ServerProcess(tmp_path / "sqlite" / "data", args=["--handler", "stats"])
    server.start()
    try:
        sequence = 0
        for index, body in enumerate(batches):
            assert await _post(session, server, body, sequence)
            sequence += body.count(b"\n")
            if index == 1:  # the first batch again, late: its snapshots are stale
                assert await _post(session, server, batches[0], 0)
        total = sequence + batches[0].count(b"\n")

        async def done() -> bool:
            q = await queue_json(session, server)
            return bool(q["pending"] == 0 and q["in_flight"] == 0
                        and q["processed_total"] == total)

        await wait_until(done, timeout=WAIT_S, what="the SQLite node applied every event")
        match = await _match(session, server)
        match["stale_skipped"] = (await _stats(session, server))["stale_skipped"]
        assert match["stale_skipped"] > 0
        return match
    finally:
        server.kill()


async def _stats(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with session.get(f"{server.url}/v1/stats") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def _live_frames(session: aiohttp.ClientSession, server: ServerProcess,
                       frames: list[dict[str, Any]]) -> None:
    """Collect the documents of `server`'s /v1/live (until cancelled)."""
    async with session.get(f"{server.url}/v1/live") as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != 'data: {"live":false}':
                frames.append(json.loads(line[6:]))


def _stats_node(tmp_path: Path, dsn: str, name: str) -> ServerProcess:
    """A stats node whose acknowledgements reach the log only every minute: the leader
    killed below has applied (and committed to the statistics) far more than the log's
    mark says, so the next leader applies those jobs again, and the statistics must
    recognise each of them."""
    (tmp_path / name).mkdir()
    return ServerProcess(tmp_path / name / "data", args=["--handler", "stats"],
                         env={"COLLECTOR_POSTGRES_DSN": dsn, "COLLECTOR_POSTGRES_NODE": name,
                              "COLLECTOR_QUEUE_ACK_INTERVAL_MS": "60000"})


@pytest.mark.slow
async def test_two_nodes_give_one_sqlite_nodes_figures_across_a_leader_killed(
        postgres_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    """The recording, posted in order to two stats nodes in turn; the leader SIGKILLed
    half way. Both nodes then answer the very match one SQLite node makes of the same
    requests (derived statistics included, which a job applied twice would change), and
    the live feed of the node that was a follower when it connected followed the match
    as the leader applied it, to its final state."""
    batches = _batches()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        expected = await _reference(tmp_path, session, batches)
        nodes = [_stats_node(tmp_path, pg_dsn, f"node{i}") for i in range(2)]
        with running(nodes):
            async def leader() -> ServerProcess | None:
                for one in nodes:
                    if (await queue_json(session, one))["leader"]:
                        return one
                return None

            async def elected() -> bool:
                return await leader() is not None

            await wait_until(elected, timeout=WAIT_S, what="a leader")
            first = await leader()
            assert first is not None
            follower = next(n for n in nodes if n is not first)
            frames: list[dict[str, Any]] = []
            watching = asyncio.create_task(_live_frames(session, follower, frames))
            sequence, turn, alive = 0, 0, list(nodes)
            posts: list[tuple[bytes, int | None]] = [(body, None) for body in batches]
            posts.insert(2, (batches[0], 0))  # the first batch again, late, as above
            for index, (body, late) in enumerate(posts):
                if index == len(posts) // 2:
                    # Half the match applied (or on its way), then the leader dies; the
                    # stale total first, from the follower: the leader's, read back.
                    await _drained(session, first, sequence)
                    assert (await _stats(session, follower))["stale_skipped"] == \
                        expected["stale_skipped"]
                    first.kill()
                    alive.remove(first)
                while True:  # to each node in turn; a 503 (no leader yet) is tried again
                    target = alive[turn % len(alive)]
                    turn += 1
                    if await _post(session, target, body, sequence if late is None else late):
                        break
                    await asyncio.sleep(0.05)
                if late is None:
                    sequence += body.count(b"\n")
            await _drained(session, follower, sequence)
            got = await _match(session, follower)
            got["stale_skipped"] = (await _stats(session, follower))["stale_skipped"]
            await wait_until(lambda: bool(frames) and {**frames[-1], "stale_skipped":
                                                        got["stale_skipped"]} == got,
                             timeout=WAIT_S,
                             what="the follower's live feed showing the final match")
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        assert _comparable(got) == _comparable(expected)
        assert got["guid"] == expected["guid"]
        # What the next leader applied again was known as applied (a replay), not taken
        # for stale events: the stale total is the reference's (the late batch's).
        conn = await connect(pg_dsn)
        try:
            stale = await conn.fetchval(
                "SELECT value FROM counters WHERE name = 'stale_skipped'")
        finally:
            await conn.close()
        assert stale == expected["stale_skipped"]
        assert len(frames) >= 2  # the live feed followed the applied jobs, not one frame


async def test_the_commands_read_the_statistics_from_postgresql(tmp_path: Path,
                                                                pg_dsn: str) -> None:
    """`collector matches|players|sessions --data-dir` with a DSN configured read the
    shared statistics, not a stats.db that this mode never writes."""
    conn = await connect(pg_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    lines = CAPTURE_JSONL.read_bytes().splitlines()
    jobs = [Job(seq=i + 1, payload=json.loads(line), received_at=1_790_000_000.0 + i)
            for i, line in enumerate(lines)]
    async with _store(tmp_path, pg_dsn, [0]) as store:
        await store.apply_run(jobs)
        expected = (await store.matches_page())["matches"]
    assert len(expected) == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(COLLECTOR_POSTGRES_DSN=pg_dsn, PYTHONPATH=str(REPO))
    data_dir = tmp_path / "node-data"  # empty: no stats.db
    for command, key in (("matches", "matches"), ("players", "players"),
                         ("sessions", "sessions")):
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "collector", command, "--json",
                             "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        page = json.loads(result.stdout)
        assert page[key], (command, page)
        if command == "matches":
            assert [m["guid"] for m in page["matches"]] == [m["guid"] for m in expected]
    assert not (data_dir / "stats.db").exists()
