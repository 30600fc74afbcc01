"""Tests written to kill the mutants of collector/queue.py and collector/worker.py that
survived the rest of the suite (see docs/mutation-testing.md): replay after a partly
done row, acknowledgements whose commit failed, the row of a dead-lettered last job,
the bound after a failed commit, the size of a page read from disk, backoff bounds.

A failing commit is injected by replacing one method of the queue's table (the part
that talks to SQLite) for one call: the rest of the queue runs as in production."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from collector.errors import StorageError
from collector.jobs import Handler, Job
from collector.queue import QUEUE_FILE, DurableQueue, inspect_file
from collector.retry import backoff_delay
from collector.worker import Worker
from tests.support.server import wait_until

QueueFactory = Callable[..., Awaitable[DurableQueue]]
BOUND_S = 10.0  # a generous bound on every wait: a hang is a failure, not a timing check


@pytest.fixture(autouse=True)
def plain_tracebacks() -> Iterator[None]:
    """Log exceptions as plain tracebacks in these tests. structlog's default console
    renderer draws them with rich, reading and highlighting the source of every frame:
    on mutmut's mutated copies of the modules (tens of thousands of lines each) one
    logged exception then takes seconds, and a test of the worker's recovery times out."""
    saved = structlog.get_config()
    structlog.configure(processors=[
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if isinstance(p, structlog.dev.ConsoleRenderer) else p
        for p in saved["processors"]
    ])
    yield
    structlog.configure(**saved)


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    """The directory of this test's queue file."""
    return tmp_path / "queue"


@pytest.fixture
async def make_queue(queue_dir: Path) -> AsyncIterator[QueueFactory]:
    """Open a DurableQueue on this test's directory; whatever is still open is closed."""
    opened: list[DurableQueue] = []

    async def factory(**options: Any) -> DurableQueue:
        queue = DurableQueue(queue_dir, **options)
        await queue.open()
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        await queue.close()


async def take(queue: DurableQueue) -> Job:
    """The next job, or a test failure if none comes within the bound."""
    return await asyncio.wait_for(queue.next_job(), timeout=BOUND_S)


def job_rows(queue_dir: Path) -> int:
    """Rows in the job table of a closed queue's file."""
    conn = sqlite3.connect(queue_dir / QUEUE_FILE)
    try:
        (count,) = conn.execute("SELECT count(*) FROM jobs_v1").fetchone()
        return int(count)
    finally:
        conn.close()


def fail_next_call(monkeypatch: pytest.MonkeyPatch, queue: DurableQueue, name: str) -> None:
    """Make the next call of the queue table's method `name` fail as SQLite would."""
    table = queue._table
    real = getattr(table, name)
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(table, name, failing)


# -- replay after a reopen ----------------------------------------------------------------


async def test_a_partly_done_row_resumes_after_its_last_acknowledged_job(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}, {"n": 2}, {"n": 3}])  # one request, one row
    queue.ack(await take(queue))
    await queue.close()

    queue = await make_queue()
    job = await take(queue)

    assert (job.seq, job.payload, job.attempt) == (2, {"n": 2}, 1)
    stats = await queue.stats()
    assert (stats.pending + stats.in_flight, stats.processed_total) == (2, 1)


async def test_a_page_read_from_disk_holds_a_bounded_number_of_jobs(
    make_queue: QueueFactory,
) -> None:
    """White-box: one read of the backlog stops after about _PAGE_EVENTS jobs (whole
    rows), whatever the number of rows asked for; the jobs still come out complete."""
    queue = await make_queue()
    for r in range(30):
        await queue.put([{"r": r, "k": k} for k in range(100)])  # one row of 100 each
    await queue.close()

    queue = await make_queue()
    assert queue._table is not None
    loop = asyncio.get_running_loop()
    page = await loop.run_in_executor(queue._executor, queue._table.fetch, 0, 64)

    assert 2048 <= len(page.jobs) < 2048 + 100
    assert [j.seq for j in page.jobs] == list(range(1, len(page.jobs) + 1))
    assert len(page.spans) == len(page.jobs) // 100


# -- what a group commit writes ----------------------------------------------------------------


def row_spans(queue_dir: Path) -> list[tuple[int, int]]:
    """(first seq, last seq) of every job row of a closed queue's file, in order."""
    conn = sqlite3.connect(queue_dir / QUEUE_FILE)
    try:
        rows = conn.execute("SELECT first_seq, _id FROM jobs_v1 ORDER BY _id").fetchall()
        return [(int(a), int(b)) for a, b in rows]
    finally:
        conn.close()


def row_data(queue_dir: Path) -> list[bytes]:
    """The data column of every job row of a closed queue's file, in order."""
    conn = sqlite3.connect(queue_dir / QUEUE_FILE)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT data FROM jobs_v1 ORDER BY _id")]
    finally:
        conn.close()


async def put_as_one_group(queue: DurableQueue, requests: list[list[Any]]) -> None:
    """Put `requests` so that they are committed as one group: the queue's thread is
    held busy until all of them wait in the outbox (white-box: its executor)."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    holding = loop.run_in_executor(queue._executor, release.wait, BOUND_S)
    puts = [asyncio.ensure_future(queue.put(events)) for events in requests]
    for _ in range(3):
        await asyncio.sleep(0)  # every put appends to the outbox
    release.set()
    await holding
    await asyncio.wait_for(asyncio.gather(*puts), BOUND_S)


@pytest.mark.parametrize(
    ("limit", "sizes", "expected"),
    [
        # _ROW_MAX_EVENTS (1024) jobs per row: a row may reach it, never pass it.
        pytest.param(None, [512, 512, 1, 1023], [(1, 1024), (1025, 2048)], id="events"),
        # _ROW_MAX_BYTES (made 100 here) of events per row: four requests of 50 bytes.
        pytest.param(100, [1, 1, 1, 1], [(1, 2), (3, 4)], id="bytes"),
    ],
)
async def test_a_group_commit_fills_rows_up_to_their_limits_and_keeps_requests_whole(
    make_queue: QueueFactory, queue_dir: Path, monkeypatch: pytest.MonkeyPatch,
    limit: int | None, sizes: list[int], expected: list[tuple[int, int]],
) -> None:
    if limit is not None:
        monkeypatch.setattr("collector.queue.table._ROW_MAX_BYTES", limit)
    requests = [[{"p": "x" * 40}] * size if limit else [{"r": r}] * size
                for r, size in enumerate(sizes)]
    if limit:
        assert {len(orjson.dumps(events)) for events in requests} == {50}
    queue = await make_queue()
    await put_as_one_group(queue, requests)
    await queue.close()

    assert row_spans(queue_dir) == expected
    queue = await make_queue()
    stats = await queue.stats()
    assert stats.oldest_pending_age_s is not None
    assert stats.oldest_pending_age_s < 3600  # the row keeps its first request's time


async def test_a_commit_with_events_is_fsynced_and_one_of_acknowledgements_alone_is_not(
    make_queue: QueueFactory,
) -> None:
    """durability = "full": a commit that stores events runs with synchronous=FULL
    (here through the explicit transaction an Idempotency-Key needs); only a commit of
    acknowledgements alone is let off the fsync. Seen through SQLite's statement trace."""
    queue = await make_queue(ack_interval_ms=0)
    table = queue._table
    assert table is not None
    statements: list[str] = []
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(queue._executor, table._conn.set_trace_callback,
                               lambda sql: statements.append(sql.upper()))
    await queue.put([{"n": 1}], key="with-a-key")
    with_events = list(statements)
    queue.ack(await take(queue))
    await wait_until(lambda: "PRAGMA SYNCHRONOUS=FULL" in statements, timeout=BOUND_S,
                     what="the acknowledgement's commit")
    acks_only = statements[len(with_events):]

    assert any("INSERT OR REPLACE INTO IDEMPOTENCY_KEYS" in sql for sql in with_events)
    assert not [sql for sql in with_events if "SYNCHRONOUS" in sql]
    assert acks_only[0] == "PRAGMA SYNCHRONOUS=NORMAL"
    assert acks_only[-1] == "PRAGMA SYNCHRONOUS=FULL"


async def test_the_bytes_received_are_what_is_stored(
    make_queue: QueueFactory, queue_dir: Path,
) -> None:
    """put() stores `array` or `blobs` as they are (spaces and all), never serialised
    again from the parsed events."""
    queue = await make_queue()
    await queue.put([{"a": 1}], array=b'[{"a":  1}]')
    await queue.put([{"b": 2}, {"c": 3}], blobs=[b'{"b" : 2}', b'{ "c": 3 }'])
    await queue.close()

    data = row_data(queue_dir)
    queue = await make_queue()
    jobs = [await take(queue) for _ in range(3)]

    assert b'[{"a":  1}]' in data[0]
    assert b'[{"b" : 2},{ "c": 3 }]' in data[1]
    assert [j.payload for j in jobs] == [{"a": 1}, {"b": 2}, {"c": 3}]


async def test_a_dead_letter_revived_at_the_tail_leaves_the_dead_letters(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    await queue.dead_letter(await take(queue), "RuntimeError: later")
    revived = await queue.retry_dead([1], at_tail=True)
    await queue.close()

    queue = await make_queue()
    stats = await queue.stats()
    letters = await queue.dead_letters()
    jobs = [await take(queue) for _ in range(2)]

    assert [j.seq for j in revived] == [3]
    assert (letters, stats.dead) == ([], 0)
    assert [(j.seq, j.payload) for j in jobs] == [(2, {"n": 2}), (3, {"n": 1})]


# -- rows the worker cannot decode ------------------------------------------------------------


def damage_row(queue_dir: Path, key: int) -> None:
    """Replace the data of job row `key` of a closed queue with bytes that are no JSON
    (damage SQLite's own checks cannot see)."""
    conn = sqlite3.connect(queue_dir / QUEUE_FILE)
    try:
        with conn:
            conn.execute("UPDATE jobs_v1 SET data = x'7b' WHERE _id = ?", (key,))
    finally:
        conn.close()


def count_fetches(monkeypatch: pytest.MonkeyPatch, queue: DurableQueue) -> list[int]:
    """Count the reads of the backlog from disk (one list item per finished read)."""
    table = queue._table
    assert table is not None
    real = table.fetch
    done: list[int] = []

    def counting(after: int, limit_rows: int) -> Any:
        page = real(after, limit_rows)
        done.append(after)
        return page

    monkeypatch.setattr(table, "fetch", counting)
    return done


async def test_an_undecodable_row_is_set_aside_and_counted_as_dead(
    make_queue: QueueFactory, queue_dir: Path,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])  # row 1
    await queue.put([{"n": 2}, {"n": 3}])  # row 3, damaged below
    await queue.put([{"n": 4}])  # row 4
    await queue.dead_letter(await take(queue), "ValueError: one")
    await queue.close()
    damage_row(queue_dir, 3)

    queue = await make_queue()
    head = await take(queue)
    stats = await queue.stats()
    letters = await queue.dead_letters()

    assert (head.seq, head.payload) == (4, {"n": 4})
    assert (stats.pending + stats.in_flight, stats.dead) == (1, 2)
    assert [d.seq for d in letters] == [1, 2]
    assert letters[1].payload["first_seq"] == 2


async def test_after_an_undecodable_last_row_the_line_waits_without_reading_the_disk(
    make_queue: QueueFactory, queue_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the backlog is read (the damaged row set aside), an idle queue waits to be
    woken by the next commit: one read that finds nothing, not a loop of them."""
    queue = await make_queue()
    await queue.put([{"n": 1}])  # row 1
    await queue.put([{"n": 2}, {"n": 3}])  # row 3, damaged below
    await queue.close()
    damage_row(queue_dir, 3)

    queue = await make_queue()
    queue.ack(await take(queue))
    reads = count_fetches(monkeypatch, queue)
    waiter = asyncio.ensure_future(queue.next_job())
    await wait_until(lambda: len(reads) >= 1, timeout=BOUND_S, what="the read of the backlog")
    await queue.put([{"n": 4}])
    job = await asyncio.wait_for(waiter, BOUND_S)

    assert (job.seq, job.payload) == (4, {"n": 4})
    assert len(reads) == 1, f"{len(reads)} reads of an empty backlog"
    assert (await queue.stats()).dead == 1


async def test_an_idle_queue_does_not_read_the_disk(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])
    queue.ack(await take(queue))
    reads = count_fetches(monkeypatch, queue)
    waiter = asyncio.ensure_future(queue.next_job())
    for _ in range(20):  # turns of the loop for a busy-waiting next_job to show itself
        await asyncio.sleep(0)
    await queue.put([{"n": 2}])
    job = await asyncio.wait_for(waiter, BOUND_S)

    assert job.seq == 2
    assert reads == []


# -- dead letters ---------------------------------------------------------------------------


async def test_dead_lettering_the_last_job_of_a_row_removes_the_row(
    make_queue: QueueFactory, queue_dir: Path,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}, {"n": 2}])  # one row, key 2
    queue.ack(await take(queue))
    await queue.dead_letter(await take(queue), "ValueError: last of its row")
    await queue.close()

    assert job_rows(queue_dir) == 0
    queue = await make_queue()
    assert (await queue.stats()).dead == 1


async def test_a_failed_dead_letter_keeps_the_acknowledgements_before_it(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue(ack_interval_ms=60_000)
    for n in (1, 2, 3, 4):
        await queue.put([{"n": n}])
    queue.ack(await take(queue))
    doomed = await take(queue)
    fail_next_call(monkeypatch, queue, "bury")
    with pytest.raises(sqlite3.OperationalError):
        await queue.dead_letter(doomed, "first try")
    await asyncio.wait_for(queue.dead_letter(doomed, "second try"), BOUND_S)
    await queue.dead_letter(await take(queue), "another")
    busy = await queue.stats()
    await queue.close()

    queue = await make_queue()
    head = await take(queue)
    stats = await queue.stats()
    letters = await queue.dead_letters()

    assert (busy.dead, busy.processed_total) == (2, 1)
    assert head.seq == 4
    assert (stats.dead, stats.processed_total) == (2, 1)
    assert [(d.seq, d.error) for d in letters] == [(2, "second try"), (3, "another")]


# -- failed attempts ------------------------------------------------------------------------


async def test_record_attempt_commits_the_acknowledgements_before_it(
    make_queue: QueueFactory, queue_dir: Path,
) -> None:
    queue = await make_queue(ack_interval_ms=60_000)  # no timer flush during the test
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    queue.ack(await take(queue))
    failing = await take(queue)
    await queue.record_attempt(failing)

    on_disk = inspect_file(queue_dir)  # what a crash right now would leave
    await queue.close()
    queue = await make_queue()
    head = await take(queue)

    assert (on_disk.pending, on_disk.processed_total) == (1, 1)
    assert (head.seq, head.attempt) == (2, 2)
    assert (await queue.stats()).processed_total == 1


async def test_a_failed_record_attempt_keeps_the_acknowledgements_before_it(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue(ack_interval_ms=60_000)
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    queue.ack(await take(queue))
    failing = await take(queue)
    fail_next_call(monkeypatch, queue, "set_attempts")
    with pytest.raises(sqlite3.OperationalError):
        await queue.record_attempt(failing)
    await asyncio.wait_for(queue.record_attempt(failing), BOUND_S)
    before_close = await queue.stats()
    await queue.close()

    queue = await make_queue()
    head = await take(queue)
    stats = await queue.stats()

    assert (before_close.pending + before_close.in_flight, before_close.processed_total) == (
        1, 1)
    assert (head.seq, head.attempt) == (2, 2)
    assert (stats.pending + stats.in_flight, stats.processed_total) == (1, 1)


# -- a group commit that fails ----------------------------------------------------------------


async def test_a_failed_commit_gives_its_room_in_the_bound_back(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue(max_pending=3)
    fail_next_call(monkeypatch, queue, "commit")
    with pytest.raises(StorageError):
        await queue.put([{"n": 1}, {"n": 2}, {"n": 3}])
    accepted = await queue.put([{"n": 1}, {"n": 2}, {"n": 3}])

    assert (accepted.first_seq, accepted.last_seq) == (1, 3)
    assert queue.pending == 3


async def test_acknowledgements_whose_commit_failed_are_written_later(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue(ack_interval_ms=0)  # each acknowledgement is its own commit
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    fail_next_call(monkeypatch, queue, "commit")
    queue.ack(await take(queue))  # its commit fails
    failing = await take(queue)
    # record_attempt first waits for the acknowledgement batches in flight to settle.
    await asyncio.wait_for(queue.record_attempt(failing), BOUND_S)
    await queue.close()

    queue = await make_queue()
    head = await take(queue)
    stats = await queue.stats()

    assert (head.seq, head.attempt) == (2, 2)
    assert (stats.pending + stats.in_flight, stats.processed_total) == (1, 1)


async def test_a_partial_acknowledgement_whose_commit_failed_is_retried_by_itself(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch, queue_dir: Path,
) -> None:
    """No later acknowledgement or close is needed: the queue retries on its own."""
    queue = await make_queue(ack_interval_ms=0)
    await queue.put([{"n": 1}, {"n": 2}])  # one row: acknowledging 1 is a partial row
    fail_next_call(monkeypatch, queue, "commit")
    queue.ack(await take(queue))

    await wait_until(lambda: inspect_file(queue_dir).processed_total == 1, timeout=BOUND_S,
                     what="the failed acknowledgement to be committed again")
    assert inspect_file(queue_dir).pending == 1


# -- acknowledgements ------------------------------------------------------------------------


def watch_commits(monkeypatch: pytest.MonkeyPatch, queue: DurableQueue
                  ) -> tuple[list[bool], threading.Event]:
    """Record, for every group commit, whether it carried acknowledgements; the event is
    set (from the writer's thread) once one did."""
    table = queue._table
    assert table is not None
    real = table.commit
    carried: list[bool] = []
    acked = threading.Event()

    def watching(puts: Any, acks: Any, ttl_s: float) -> Any:
        result = real(puts, acks, ttl_s)
        carried.append(bool(acks))
        if acks:
            acked.set()
        return result

    monkeypatch.setattr(table, "commit", watching)
    return carried, acked


async def test_without_an_interval_an_acknowledgement_is_written_at_once(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ack_interval_ms = 0: the acknowledgement is on its way to the disk when ack()
    returns, not after the event loop runs again (a worker may handle many jobs before
    it yields; each would be replayed after a crash)."""
    queue = await make_queue(ack_interval_ms=0)
    await queue.put([{"n": 1}])
    job = await take(queue)
    _carried, acked = watch_commits(monkeypatch, queue)
    queue.ack(job)
    # Blocking the loop on purpose: no timer or callback of the loop can run meanwhile.
    assert acked.wait(BOUND_S), "the acknowledgement waited for the event loop"


async def test_with_an_interval_acknowledgements_wait_for_it(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue(ack_interval_ms=60_000)
    await queue.put([{"n": 1}])
    queue.ack(await take(queue))
    carried, _acked = watch_commits(monkeypatch, queue)
    await queue.put([{"n": 2}])  # a group commit after the acknowledgement
    before_close = list(carried)
    await queue.close()

    assert before_close == [False]
    assert carried == [False, True]  # written at close


async def test_an_acknowledged_revived_job_does_not_come_back(
    make_queue: QueueFactory, queue_dir: Path,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    await queue.dead_letter(await take(queue), "RuntimeError: first")
    revived = await queue.retry_dead([1])
    again = await take(queue)
    queue.ack(again)
    await queue.close()

    queue = await make_queue()
    head = await take(queue)
    stats = await queue.stats()

    assert [j.seq for j in revived] == [again.seq] == [1]
    assert (head.seq, head.attempt) == (2, 1)
    assert (stats.dead, stats.processed_total) == (0, 1)


# -- the worker survives failures of the queue --------------------------------------------------


async def run_worker(queue: DurableQueue, handler: Handler) -> Worker:
    """A started worker with fast retries."""
    worker = Worker(queue, [("h", handler)], backoff_base=0.01, backoff_cap=0.02,
                    rng=random.Random(3))
    worker.start()
    return worker


async def test_the_worker_goes_on_after_the_queue_failed_to_hand_out_a_job(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue()
    real = queue.next_job
    failures = 0

    async def failing_once() -> Job:
        nonlocal failures
        if not failures:
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return await real()

    monkeypatch.setattr(queue, "next_job", failing_once)
    seen: list[int] = []

    async def handler(job: Job) -> None:
        seen.append(job.seq)

    worker = await run_worker(queue, handler)
    try:
        await wait_until(lambda: failures == 1, timeout=BOUND_S, what="the failed take")
        await queue.put([{"n": 1}])
        await wait_until(lambda: seen == [1], timeout=BOUND_S, what="the job after it")
        assert worker.running
    finally:
        await worker.stop(0.5)


async def test_the_worker_goes_on_after_recording_a_failed_attempt_failed(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])
    await queue.put([{"n": 2}])
    fail_next_call(monkeypatch, queue, "set_attempts")
    calls: list[tuple[int, int]] = []

    async def handler(job: Job) -> None:
        calls.append((job.seq, job.attempt))
        if len(calls) <= 2:
            raise RuntimeError("not yet")

    worker = await run_worker(queue, handler)
    try:
        await wait_until(lambda: queue.processed_total == 2, timeout=BOUND_S,
                         what="both jobs done")
        assert worker.running
    finally:
        await worker.stop(0.5)
    # The first failure could not be recorded: the job kept its place and its attempt.
    assert calls == [(1, 1), (1, 1), (1, 2), (2, 1)]


# -- backoff --------------------------------------------------------------------------------


class _Extreme(random.Random):
    """A Random whose uniform() always answers one end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (3, 4.0), (9, 100.0)])
def test_backoff_spans_half_to_all_of_its_ceiling(attempt: int, ceiling: float) -> None:
    low = backoff_delay(attempt, base=1.0, cap=100.0, rng=_Extreme(high=False))
    high = backoff_delay(attempt, base=1.0, cap=100.0, rng=_Extreme(high=True))

    assert (low, high) == (ceiling / 2, ceiling)
