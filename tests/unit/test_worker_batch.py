"""Runs of jobs for handlers that take them (`batch(jobs)`), on a real DurableQueue:
consecutive, in order, applied once; a failing event isolated and alone retried or
dead-lettered; chains that cannot batch get one job at a time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from collector import PermanentError
from collector.jobs import Handler, Job
from collector.queue import DurableQueue
from collector.worker import Worker
from tests.support.server import wait_until

FAST = {"backoff_base": 0.01, "backoff_cap": 0.02, "max_attempts": 2}


class Batching:
    """A handler with batch(): records each call, fails on the jobs it is told to."""

    def __init__(self, *, fail: set[int] | None = None, permanent: bool = False) -> None:
        self.runs: list[list[int]] = []  # batch() calls that succeeded, seqs
        self.singles: list[tuple[int, int]] = []  # (seq, attempt) of one-job calls
        self.applied: list[int] = []  # every seq whose effect took, in order
        self.fail = fail or set()
        self.permanent = permanent

    def _check(self, job: Job) -> None:
        if job.payload["n"] in self.fail:
            if self.permanent:
                raise PermanentError(f"bad {job.payload['n']}")
            raise ValueError(f"bad {job.payload['n']}")

    async def __call__(self, job: Job) -> None:
        self.singles.append((job.seq, job.attempt))
        self._check(job)
        self.applied.append(job.seq)

    async def batch(self, jobs: Sequence[Job]) -> None:
        for job in jobs:  # all or nothing: check first, then apply
            self._check(job)
        self.runs.append([job.seq for job in jobs])
        self.applied.extend(job.seq for job in jobs)


async def _run(tmp_path: Path, handlers: list[tuple[str, Handler]], events: int,
               done: int, **options: object) -> DurableQueue:
    queue = DurableQueue(tmp_path / "q", ack_interval_ms=0)
    await queue.open()
    await queue.put([{"n": n} for n in range(1, events + 1)])  # all waiting at once
    worker = Worker(queue, handlers, rng=random.Random(1), **options)  # type: ignore[arg-type]
    worker.start()
    try:
        await wait_until(lambda: queue.processed_total + queue_dead(queue) >= done,
                         timeout=30, what=f"{done} jobs settled")
        await asyncio.sleep(0)
    finally:
        await worker.stop(5)
    return queue


def queue_dead(queue: DurableQueue) -> int:
    """Dead letters so far (the counter /v1/queue reports)."""
    return queue._dead


async def test_waiting_jobs_go_in_runs_in_order_and_once(tmp_path: Path) -> None:
    handler = Batching()
    queue = await _run(tmp_path, [("b", handler)], 300, 300, batch_max=128, **FAST)
    try:
        assert handler.applied == list(range(1, 301))
        assert handler.singles == []
        assert [len(r) for r in handler.runs] == [128, 128, 44]
        assert all(r == list(range(r[0], r[-1] + 1)) for r in handler.runs)  # consecutive
        stats = await queue.stats()
        assert (stats.processed_total, stats.pending, stats.in_flight) == (300, 0, 0)
    finally:
        await queue.close()


async def test_a_failing_event_is_isolated_and_retried_alone(tmp_path: Path) -> None:
    handler = Batching(fail={5})
    queue = await _run(tmp_path, [("b", handler)], 10, 9, batch_max=16, **FAST)
    try:
        assert handler.runs == []  # the only run failed as a whole
        # one by one: 1-4 applied, 5 fails twice (max_attempts 2) and is dead, 6-10 go on
        assert handler.singles == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (5, 2),
                                   (6, 1), (7, 1), (8, 1), (9, 1), (10, 1)]
        assert handler.applied == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        (dead,) = await queue.dead_letters()
        assert (dead.seq, dead.attempts, dead.error) == (5, 2, "ValueError: bad 5")
    finally:
        await queue.close()


async def test_a_permanent_failure_in_a_run_dead_letters_only_that_event(
    tmp_path: Path
) -> None:
    handler = Batching(fail={3}, permanent=True)
    queue = await _run(tmp_path, [("b", handler)], 6, 5, batch_max=16, **FAST)
    try:
        assert handler.applied == [1, 2, 4, 5, 6]
        assert [seq for seq, _ in handler.singles] == [1, 2, 3, 4, 5, 6]
        (dead,) = await queue.dead_letters()
        assert (dead.seq, dead.attempts) == (3, 1)
    finally:
        await queue.close()


async def test_a_later_handler_failing_does_not_apply_the_earlier_one_twice(
    tmp_path: Path
) -> None:
    first, second = Batching(), Batching(fail={2})
    queue = await _run(tmp_path, [("first", first), ("second", second)], 4, 3,
                       batch_max=16, **FAST)
    try:
        assert first.runs == [[1, 2, 3, 4]]  # took the run once
        assert first.singles == []
        assert second.runs == []
        assert second.applied == [1, 3, 4]
        assert [seq for seq, _ in second.singles] == [1, 2, 2, 3, 4]
    finally:
        await queue.close()


async def test_a_chain_with_a_one_job_handler_gets_one_job_at_a_time(
    tmp_path: Path
) -> None:
    seen: list[int] = []

    async def plain(job: Job) -> None:
        seen.append(job.seq)

    batching = Batching()
    queue = await _run(tmp_path, [("b", batching), ("plain", plain)], 20, 20,
                       batch_max=16, **FAST)
    try:
        assert batching.runs == []
        assert [seq for seq, _ in batching.singles] == list(range(1, 21))
        assert seen == list(range(1, 21))
    finally:
        await queue.close()


@pytest.mark.parametrize("batch_max", [1, 2])
async def test_batch_max_bounds_a_run(tmp_path: Path, batch_max: int) -> None:
    handler = Batching()
    queue = await _run(tmp_path, [("b", handler)], 7, 7, batch_max=batch_max, **FAST)
    try:
        assert handler.applied == list(range(1, 8))
        if batch_max == 1:
            assert handler.runs == []
            assert len(handler.singles) == 7
        else:
            assert [len(r) for r in handler.runs] == [2, 2, 2]
            assert handler.singles == [(7, 1)]
    finally:
        await queue.close()
