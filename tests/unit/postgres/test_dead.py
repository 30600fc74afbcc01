"""Settling by the leader: acknowledgements, failed attempts, dead letters and their
retry (in place or at the tail) and drop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from collector.jobs import Job
from collector.postgres import Candidate, LogReader, Request, SharedLog
from tests.support.postgres import PoolFactory


@dataclass
class Leader:
    log: SharedLog
    epoch: int
    reader: LogReader


@pytest.fixture
async def leader(make_pool: PoolFactory, pg_dsn: str) -> AsyncIterator[Leader]:
    """Six events (seqs 1..6) in the log, and this test as the elected leader, reading
    three jobs a page."""
    log = SharedLog(await make_pool())
    await log.append([Request([b'{"n":%d}' % n for n in range(1, 7)], 1.0, "src", 100)])
    candidate = Candidate(pg_dsn, "test")
    term = await candidate.try_lead()
    assert term is not None
    yield Leader(log, term.epoch, LogReader(log, after=term.applied_seq, page=3))
    await candidate.close()


def seqs(jobs: list[Job]) -> list[int]:
    return [job.seq for job in jobs]


async def test_retry_in_place_runs_first_in_seq_order_and_keeps_the_seqs(
        leader: Leader) -> None:
    log, epoch, reader = leader.log, leader.epoch, leader.reader
    jobs = await reader.take()
    assert seqs(jobs) == [1, 2, 3]
    await log.bury(epoch, jobs[2], "boom", processed=2)  # 1 and 2 done, 3 dead
    jobs = await reader.take()
    assert seqs(jobs) == [4, 5, 6]
    await log.ack(epoch, upto=4, processed=1)
    await log.bury(epoch, jobs[1], "bang")
    assert [(d.seq, d.error, d.payload, d.source, d.sequence) for d in
            await log.dead_letters()] == [(3, "boom", {"n": 3}, "src", 102),
                                          (5, "bang", {"n": 5}, "src", 104)]
    assert (await log.state()).applied_seq == 5
    # Both back in their old place, asked in the wrong order: they run next, by seq.
    revived = await log.retry_dead([5, 3])
    assert seqs(revived) == [3, 5]
    assert await log.dead_count() == 0
    assert await log.pending() == 3  # 3, 5 and 6 (in flight)
    again = await reader.take()
    assert [(j.seq, j.payload, j.attempt, j.sequence) for j in again] == [
        (3, {"n": 3}, 1, 102), (5, {"n": 5}, 1, 104)]
    assert await reader.take() == []  # handed out once
    await log.ack(epoch, upto=6, revived=[3, 5], processed=3)
    for job in again:
        reader.settled(job)
    state = await log.state()
    assert (state.applied_seq, state.processed_total) == (6, 6)
    assert await log.pending() == 0
    assert await reader.take() == []


async def test_retry_at_the_tail_gets_new_seqs(leader: Leader) -> None:
    log, epoch, reader = leader.log, leader.epoch, leader.reader
    jobs = await reader.take()
    await log.bury(epoch, jobs[0], "boom")
    revived = await log.retry_dead([1], at_tail=True)
    assert [(j.seq, j.payload, j.source, j.sequence) for j in revived] == [
        (7, {"n": 1}, "src", 100)]
    assert await log.dead_letters() == []
    await log.ack(epoch, upto=3, processed=2)
    assert seqs(await reader.take()) == [4, 5, 6]
    assert seqs(await reader.take()) == [7]


async def test_drop_deletes_a_dead_letter_for_good(leader: Leader) -> None:
    log, epoch, reader = leader.log, leader.epoch, leader.reader
    jobs = await reader.take()
    await log.bury(epoch, jobs[0], "boom")
    assert await log.drop_dead([1, 99]) == 1
    assert await log.dead_letters() == []
    assert await log.drop_dead([1]) == 0
    assert await log.retry_dead([1]) == []
    assert await log.pending() == 5


async def test_failed_attempts_are_kept_for_the_next_leader(leader: Leader) -> None:
    """A failure keeps the job's place; its count survives a change of leader, which
    resumes from the committed mark."""
    log, epoch, reader = leader.log, leader.epoch, leader.reader
    jobs = await reader.take()
    failing = jobs[1]
    for attempt, done in ((1, 1), (2, 0)):  # job 1's acknowledgement goes with the first
        await log.record_attempt(epoch, Job(failing.seq, failing.payload,
                                            failing.received_at, attempt), upto=1,
                                 processed=done)
    state = await log.state()
    assert (state.applied_seq, state.processed_total) == (1, 1)
    again = await LogReader(log, after=state.applied_seq).take()
    assert [(j.seq, j.attempt) for j in again[:2]] == [(2, 3), (3, 1)]


async def test_acknowledged_rows_are_deleted_and_the_mark_never_goes_back(
        leader: Leader) -> None:
    log, epoch = leader.log, leader.epoch
    assert await log.ack(epoch, upto=4, processed=4) == 4
    assert await log.ack(epoch, upto=2) == 4
    assert seqs(await log.jobs_after(0, 10)) == [5, 6]
    assert await log.backlog() == 2
    assert await log.oldest_received_at() == 1.0
