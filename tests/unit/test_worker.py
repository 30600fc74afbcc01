"""Worker with a real DurableQueue: order, retries at the head, dead letters, timeouts, stop."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from collector import PermanentError
from collector.jobs import Handler, Job
from collector.queue import DurableQueue
from collector.retry import backoff_delay
from collector.worker import Worker
from tests.support.server import wait_until

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05}
WAIT_S = 60.0  # a hang guard: a wait this long is a hang, not a slow machine
T = TypeVar("T")


async def within(step: Awaitable[T], what: str) -> T:
    """Await `step`; if it has not finished after WAIT_S, fail saying what hung."""
    try:
        return await asyncio.wait_for(step, timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"hung for {WAIT_S} s: {what}") from None


@dataclass
class Rig:
    """A queue on tmp_path and the workers running on it (stopped before it closes)."""

    path: Path
    queue: DurableQueue | None = None
    workers: list[Worker] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    async def open(self) -> DurableQueue:
        """(Re)open the queue."""
        self.queue = DurableQueue(self.path)
        await self.queue.open()
        return self.queue

    def start(self, handlers: list[tuple[str, Handler]], **options: Any) -> Worker:
        """Start a worker on the open queue."""
        assert self.queue is not None
        worker = Worker(self.queue, handlers, rng=random.Random(7), **options)
        self.workers.append(worker)
        worker.start()
        return worker

    async def shut(self) -> None:
        """Stop the workers, then close the queue (what the app's cleanup does).

        A worker task that died is collected here (its error noted in `crashes`), so that
        its exception is not reported later from a garbage collection in another test.
        """
        for worker in self.workers:
            task = getattr(worker, "_task", None)
            if isinstance(task, asyncio.Task) and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    self.crashes.append(type(error).__name__)
            await within(worker.stop(0.5), "stopping a worker at the end of the test")
        self.workers.clear()
        if self.queue is not None:
            await self.queue.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """An open queue on this test's directory."""
    rig = Rig(tmp_path / "queue")
    await rig.open()
    yield rig
    await rig.shut()


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """wait_until with this module's hang guard."""
    await wait_until(predicate, timeout=timeout, what=what)


Calls = list[tuple[int, int]]


def recording(calls: Calls, behave: Callable[[Job], Awaitable[None]] | None = None) -> Handler:
    """A handler that appends (seq, attempt), then does what `behave` does."""

    async def handler(job: Job) -> None:
        calls.append((job.seq, job.attempt))
        if behave is not None:
            await behave(job)

    return handler


async def put_each(queue: DurableQueue, count: int) -> None:
    """`count` jobs, one request each, payload {"n": i} from 1."""
    for n in range(1, count + 1):
        await queue.put([{"n": n}])


async def test_jobs_run_in_order_and_are_acknowledged_after_success(rig: Rig) -> None:
    assert rig.queue is not None
    queue = rig.queue
    gate = asyncio.Event()
    calls: Calls = []

    async def wait_on_first(job: Job) -> None:
        if job.seq == 1:
            await gate.wait()

    await queue.put([{"n": 1}, {"n": 2}])
    await queue.put([{"n": 3}])
    worker = rig.start([("rec", recording(calls, wait_on_first))], **FAST)
    await until(lambda: calls == [(1, 1)], "the first job starts")
    during = await queue.stats()
    gate.set()
    await put_each(queue, 2)
    await until(lambda: len(calls) == 5, "five jobs handled")
    await until(lambda: queue.processed_total == 5, "five jobs acknowledged")
    await rig.shut()
    reopened = await (await rig.open()).stats()

    assert calls == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    assert (during.in_flight, during.processed_total, during.pending) == (1, 0, 2)
    assert worker.counters.processed == 5
    assert (reopened.pending, reopened.processed_total) == (0, 5)


async def test_a_failing_job_is_retried_at_the_head_of_the_line(rig: Rig) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def fail_twice(job: Job) -> None:
        if job.seq == 2 and job.attempt < 3:
            raise RuntimeError(f"try {job.attempt}")

    await put_each(rig.queue, 4)
    worker = rig.start([("rec", recording(calls, fail_twice))], max_attempts=5, **FAST)
    await until(lambda: len(calls) == 6, "six handler calls")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")

    assert calls == [(1, 1), (2, 1), (2, 2), (2, 3), (3, 1), (4, 1)]
    assert (worker.counters.processed, worker.counters.retried) == (4, 2)
    assert await rig.queue.dead_letters() == []


async def test_after_max_attempts_the_job_is_dead_lettered_with_its_last_error(
    rig: Rig,
) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def always_fail_first(job: Job) -> None:
        if job.seq == 1:
            raise ValueError(f"bad player on try {job.attempt}")

    await put_each(rig.queue, 2)
    worker = rig.start([("rec", recording(calls, always_fail_first))], max_attempts=3, **FAST)
    await until(lambda: len(calls) == 4, "four handler calls")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")
    dead = await rig.queue.dead_letters()
    stats = await rig.queue.stats()

    assert calls == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert [(d.seq, d.attempts, d.error, d.payload) for d in dead] == [
        (1, 3, "ValueError: bad player on try 3", {"n": 1})
    ]
    assert (stats.dead, stats.processed_total) == (1, 1)
    assert (worker.counters.dead_lettered, worker.counters.processed) == (1, 1)


async def test_permanent_error_dead_letters_at_once(rig: Rig) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def refuse_first(job: Job) -> None:
        if job.seq == 1:
            raise PermanentError("not a Stats API message")

    await put_each(rig.queue, 2)
    rig.start([("rec", recording(calls, refuse_first))], max_attempts=5, **FAST)
    await until(lambda: len(calls) == 2, "two handler calls")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")
    dead = await rig.queue.dead_letters()

    assert calls == [(1, 1), (2, 1)]
    assert [(d.seq, d.attempts) for d in dead] == [(1, 1)]
    assert dead[0].error == "PermanentError: not a Stats API message"


class OddError(Exception):
    """An exception type of the handler's own, without a message."""


class UnprintableError(Exception):
    """An exception whose text fails to render the first time it is asked for.

    (Only the first time, so that pytest can still report on it if the worker dies.)
    """

    rendered = False

    def __str__(self) -> str:
        if not self.rendered:
            self.rendered = True
            raise RuntimeError("the text of this error refers to state that is gone")
        return "rendered late"


async def raise_odd(job: Job) -> None:
    """A different odd exception for each seq up to 6."""
    n = job.payload["n"]
    if n == 1:
        raise KeyError("MatchGuid")
    if n == 2:
        raise OddError
    if n == 3:
        raise ExceptionGroup("several", [ValueError("a"), TypeError("b")])
    if n == 4:
        _ = 1 / 0
    if n == 5:
        raise NotImplementedError
    if n == 6:
        raise StopAsyncIteration  # an odd one: normally only ends `async for`


async def test_odd_handler_errors_never_stop_the_worker(rig: Rig) -> None:
    assert rig.queue is not None
    calls: Calls = []

    await put_each(rig.queue, 7)
    worker = rig.start([("rec", recording(calls, raise_odd))], max_attempts=2, **FAST)
    await until(lambda: len(calls) == 13, "thirteen handler calls")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")
    dead = await rig.queue.dead_letters()

    assert worker.running
    assert calls[-1] == (7, 1)
    assert [(d.seq, d.error) for d in dead] == [
        (1, "KeyError: 'MatchGuid'"), (2, "OddError"),
        (3, "ExceptionGroup: several (2 sub-exceptions)"),
        (4, "ZeroDivisionError: division by zero"), (5, "NotImplementedError"),
        (6, "StopAsyncIteration")]
    assert rig.queue.processed_total == 1


async def test_an_exception_without_printable_text_does_not_stop_the_worker(rig: Rig) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def unprintable_first(job: Job) -> None:
        if job.seq == 1:
            raise UnprintableError

    await put_each(rig.queue, 2)
    worker = rig.start([("rec", recording(calls, unprintable_first))], max_attempts=2, **FAST)
    await until(lambda: len(calls) == 3 or not worker.running, "three calls or a dead worker")
    await until(lambda: (rig.queue is not None and rig.queue.pending == 0) or not worker.running,
                "queue drained or a dead worker")

    alive = worker.running
    dead = await rig.queue.dead_letters()
    await rig.shut()

    assert alive, f"the worker task died: {rig.crashes}"
    assert calls == [(1, 1), (1, 2), (2, 1)]
    assert [(d.seq, d.attempts) for d in dead] == [(1, 2)]
    assert dead[0].error == "UnprintableError: (message unavailable)"


async def test_handler_timeout_counts_as_a_failure(rig: Rig) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def hang(job: Job) -> None:
        if (job.seq == 1 and job.attempt == 1) or job.seq == 2:
            await asyncio.sleep(60)

    await put_each(rig.queue, 3)
    worker = rig.start([("rec", recording(calls, hang))], max_attempts=2,
                       handler_timeout=0.1, **FAST)
    await until(lambda: len(calls) == 5, "five handler calls")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")

    assert calls == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    dead = await rig.queue.dead_letters()
    assert [(d.seq, d.attempts) for d in dead] == [(2, 2)]
    assert dead[0].error == "handler timed out after 0.1 s"
    assert (worker.counters.processed, worker.counters.retried) == (2, 2)


async def test_a_handler_raising_timeout_error_itself_keeps_its_own_text(rig: Rig) -> None:
    """Only the worker's own timeout is reported as one; the handler's error text is kept."""
    assert rig.queue is not None

    async def upstream_timeout(job: Job) -> None:
        raise TimeoutError("upstream archive did not answer")

    await put_each(rig.queue, 1)
    rig.start([("upstream", upstream_timeout)], max_attempts=1, handler_timeout=30, **FAST)
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")
    dead = await rig.queue.dead_letters()

    assert [(d.seq, d.error) for d in dead] == [
        (1, "TimeoutError: upstream archive did not answer")]


def ceiling(attempt: int, base: float, cap: float) -> float:
    return min(cap, base * 2.0 ** (attempt - 1))


@pytest.mark.parametrize(("base", "cap"), [(0.5, 30.0), (0.01, 0.05), (2.0, 3.0)])
def test_backoff_delay_stays_within_equal_jitter_bounds(base: float, cap: float) -> None:
    for seed in range(50):
        rng = random.Random(seed)
        for attempt in range(1, 15):
            delay = backoff_delay(attempt, base=base, cap=cap, rng=rng)
            top = ceiling(attempt, base, cap)
            assert top / 2 <= delay <= top, (attempt, delay)


def test_backoff_delay_grows_then_is_capped() -> None:
    delays = [backoff_delay(a, base=0.5, cap=30.0, rng=random.Random(1)) for a in range(1, 12)]

    for earlier, later, attempt in zip(delays, delays[1:], range(1, 12), strict=False):
        if ceiling(attempt + 1, 0.5, 30.0) < 30.0:
            assert later >= earlier
    assert delays[0] <= 0.5
    assert delays[6] >= 16.0  # ceiling 32 capped to 30: at least half of it
    assert max(delays) <= 30.0
    assert all(15.0 <= d <= 30.0 for d in delays[6:])


@pytest.mark.parametrize("attempt", [100, 1_100, 100_000])
def test_backoff_delay_is_capped_for_any_attempt_number(attempt: int) -> None:
    """max_attempts has no upper limit, so a long-failing job reaches large attempt numbers."""
    delay = backoff_delay(attempt, base=0.5, cap=30.0, rng=random.Random(3))

    assert 15.0 <= delay <= 30.0


def test_backoff_delay_is_jittered() -> None:
    values = {backoff_delay(4, base=0.5, cap=30.0, rng=random.Random(seed)) for seed in range(10)}

    assert len(values) >= 5
    same = {backoff_delay(4, base=0.5, cap=30.0, rng=random.Random(5)) for _ in range(3)}
    assert len(same) == 1


async def test_each_handler_is_applied_once_when_a_later_one_fails(rig: Rig) -> None:
    assert rig.queue is not None
    first: Calls = []
    second: Calls = []

    async def fail_once(job: Job) -> None:
        if job.attempt == 1:
            raise ConnectionError("archive offline")

    await put_each(rig.queue, 2)
    rig.start([("one", recording(first)), ("two", recording(second, fail_once))],
              max_attempts=3, **FAST)
    await until(lambda: len(second) == 4, "handler two ran four times")
    await until(lambda: rig.queue is not None and rig.queue.pending == 0, "queue drained")

    assert first == [(1, 1), (2, 1)]
    assert second == [(1, 1), (1, 2), (2, 1), (2, 2)]


async def test_stop_lets_the_running_job_finish_within_grace(rig: Rig) -> None:
    assert rig.queue is not None
    events: list[str] = []

    async def slowish(job: Job) -> None:
        events.append(f"start {job.seq}")
        await asyncio.sleep(0.3)
        events.append(f"end {job.seq}")

    await put_each(rig.queue, 3)
    worker = rig.start([("slow", slowish)], **FAST)
    await until(lambda: events == ["start 1"], "job 1 starts")
    await within(worker.stop(10.0), "stop(10.0) while job 1 (0.3 s) runs")
    stopped_events = list(events)
    running = worker.running
    await rig.shut()
    queue = await rig.open()
    stats = await queue.stats()
    head = await within(queue.next_job(), "the head job after the reopen")

    assert stopped_events == ["start 1", "end 1"]
    assert not running
    assert (stats.pending, stats.processed_total) == (2, 1)
    assert (head.seq, head.attempt) == (2, 1)


async def test_stop_past_grace_cancels_the_job_and_it_comes_back(rig: Rig) -> None:
    assert rig.queue is not None
    events: list[str] = []

    async def hang(job: Job) -> None:
        events.append(f"start {job.seq}")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append(f"cancelled {job.seq}")
            raise
        events.append(f"end {job.seq}")

    await put_each(rig.queue, 2)
    worker = rig.start([("hang", hang)], **FAST)
    await until(lambda: events == ["start 1"], "job 1 starts")
    await within(worker.stop(0.2), "stop(0.2) cutting the hanging job")
    running = worker.running
    await rig.shut()
    queue = await rig.open()
    stats = await queue.stats()
    head = await within(queue.next_job(), "the head job after the reopen")

    assert events == ["start 1", "cancelled 1"]
    assert not running
    assert (stats.pending, stats.processed_total) == (2, 0)
    assert (head.seq, head.payload) == (1, {"n": 1})


async def test_stop_during_backoff_keeps_the_job_at_the_head_with_its_attempts(
    rig: Rig,
) -> None:
    assert rig.queue is not None
    calls: Calls = []

    async def fail(job: Job) -> None:
        raise RuntimeError("try later")

    await put_each(rig.queue, 2)
    worker = rig.start([("rec", recording(calls, fail))], max_attempts=5, backoff_base=60.0,
                       backoff_cap=60.0)
    await until(lambda: worker.counters.retried == 1, "the first failure is recorded")
    await within(worker.stop(5.0), "stop(5.0) during a 60 s backoff")
    await rig.shut()
    queue = await rig.open()
    head = await within(queue.next_job(), "the head job after the reopen")

    assert calls == [(1, 1)]
    assert (head.seq, head.attempt) == (1, 2)


async def test_stop_of_an_idle_worker_returns(rig: Rig) -> None:
    """An idle worker is stopped at once, not after its grace (an hour here)."""
    calls: Calls = []
    worker = rig.start([("rec", recording(calls))], **FAST)
    await until(lambda: worker.running, "the worker runs")

    await within(worker.stop(3600.0), "stop(3600) of an idle worker, which needs no grace")

    assert not worker.running
    assert calls == []


async def test_last_progress_moves_on_with_a_done_job_and_with_a_dead_letter(rig: Rig) -> None:
    """The 'seconds since progress' metric reads last_progress: both a finished job and a
    job moved to the dead letters move the line on."""
    queue = rig.queue
    assert queue is not None
    release = asyncio.Event()

    async def handler(job: Job) -> None:
        await release.wait()
        if job.payload.get("bad"):
            raise PermanentError("refused")

    worker = rig.start([("h", handler)], **FAST)
    loop = asyncio.get_running_loop()
    marks = []
    for payload in ({"ok": 1}, {"bad": 1}):
        mark = worker.counters.last_progress
        await queue.put([payload])
        await until(lambda: worker.busy_for is not None, "the handler runs")
        before = loop.time()  # the job is held until after this reading
        release.set()
        progressed = functools.partial(lambda m: worker.counters.last_progress != m, mark)
        await until(progressed, "progress recorded")
        release.clear()
        marks.append((mark, worker.counters.last_progress, before))

    assert worker.counters.processed == 1
    assert worker.counters.dead_lettered == 1
    for mark, progress, _before in marks:
        assert progress > mark
    # A done job's progress is the time its call started (while it was held); the dead
    # letter's is recorded when it is buried, after the job was held.
    assert marks[0][0] < marks[0][1] <= marks[0][2], marks
    assert marks[1][1] >= marks[1][2], marks
