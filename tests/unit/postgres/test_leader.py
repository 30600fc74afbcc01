"""Leader election: exactly one leads, another takes over when its session dies, and
the stale leader's settling is refused (fenced on the epoch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from collector.postgres import Candidate, FencedError, Request, SharedLog, connect
from tests.support.postgres import PoolFactory

TAKEOVER_LIMIT_S = 5.0


@pytest.fixture
async def candidates(pg_dsn: str, make_pool: PoolFactory
                     ) -> AsyncIterator[Callable[[str], Candidate]]:
    """Candidates on this test's database (schema migrated); closed at the end."""
    await make_pool()  # migrates
    made: list[Candidate] = []

    def factory(node: str) -> Candidate:
        made.append(Candidate(pg_dsn, node, poll_s=0.02))
        return made[-1]

    yield factory
    for candidate in made:
        await candidate.close()


async def test_exactly_one_of_two_candidates_leads(
        candidates: Callable[[str], Candidate]) -> None:
    a, b = candidates("a"), candidates("b")
    for expected_epoch in (1, 2, 3):
        terms = await asyncio.gather(a.try_lead(), b.try_lead())
        leading = [t for t in terms if t is not None]
        assert len(leading) == 1
        assert leading[0].epoch == expected_epoch
        assert list(await asyncio.gather(a.still_leading(), b.still_leading())) == [
            t is not None for t in terms]
        # Asking again changes nothing: the leader keeps its term, the other waits.
        assert await asyncio.gather(a.try_lead(), b.try_lead()) == terms
        leader = a if terms[0] is not None else b
        await leader.resign()
        assert not await leader.still_leading()


async def test_another_candidate_takes_over_when_the_leaders_session_is_killed(
        candidates: Callable[[str], Candidate], make_pool: PoolFactory, pg_dsn: str) -> None:
    log = SharedLog(await make_pool())
    await log.append([Request([b'{"n":%d}' % n for n in range(1, 6)], 1.0)])
    old, new = candidates("old"), candidates("new")
    first = await old.try_lead()
    assert first is not None
    assert (first.epoch, first.applied_seq) == (1, 0)
    assert await log.ack(first.epoch, upto=2, processed=2) == 2
    waiting = asyncio.create_task(new.lead())
    await asyncio.sleep(0.1)
    assert not waiting.done(), "took over while the leader held the lock"

    admin = await connect(pg_dsn)
    try:
        pid = old.backend_pid
        assert pid is not None
        killed_at = time.monotonic()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    second = await asyncio.wait_for(waiting, TAKEOVER_LIMIT_S)
    took_over_s = time.monotonic() - killed_at
    print(f"takeover after pg_terminate_backend: {took_over_s * 1000:.0f} ms")  # noqa: T201
    # It resumes after the committed mark, under a new epoch.
    assert (second.epoch, second.applied_seq, second.node) == (2, 2, "new")
    assert (await log.state()).leader == "new"

    # The old leader does not know yet: its settling is refused, nothing is written.
    job = (await log.jobs_after(2, 1))[0]
    with pytest.raises(FencedError):
        await log.ack(first.epoch, upto=4, processed=2)
    with pytest.raises(FencedError):
        await log.record_attempt(first.epoch, job)
    with pytest.raises(FencedError):
        await log.bury(first.epoch, job, "stale")
    state = await log.state()
    assert (state.applied_seq, state.processed_total, state.epoch) == (2, 2, 2)
    assert await log.pending() == 3
    assert await log.dead_count() == 0
    # Its heartbeat says so, and the new leader settles normally.
    assert not await old.still_leading()
    assert await new.still_leading()
    assert await log.ack(second.epoch, upto=5, processed=3) == 5
    assert await log.pending() == 0


async def test_a_resigned_leader_is_replaced_at_the_next_poll(
        candidates: Callable[[str], Candidate]) -> None:
    a, b = candidates("a"), candidates("b")
    assert await a.try_lead() is not None
    waiting = asyncio.create_task(b.lead())
    await a.resign()
    term = await asyncio.wait_for(waiting, TAKEOVER_LIMIT_S)
    assert term.epoch == 2
    assert await a.try_lead() is None


async def test_the_leaders_session_has_tcp_keepalives(
        candidates: Callable[[str], Candidate]) -> None:
    """A vanished node's session must end (and release the lock) within about 25 s, and
    within 30 s when it vanished with the server's data unacknowledged."""
    a = candidates("a")
    assert await a.try_lead() is not None
    conn = a._conn
    assert conn is not None
    settings = [await conn.fetchval(f"SHOW {name}") for name in (
        "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
        "tcp_user_timeout")]
    assert settings == ["10", "5", "3", "30000"]  # as the socket has them (ms)
