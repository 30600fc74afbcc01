"""DurableQueue on a real SQLite file: order, seqs, group commit, acks, replay, numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from collector.errors import QueueClosedError, QueueFullError, StorageFullError
from collector.jobs import Job
from collector.queue import QUEUE_FILE, Accepted, DurableQueue

QueueFactory = Callable[..., Awaitable[DurableQueue]]
T = TypeVar("T")
# Jobs not yet done in the file (a row holds jobs first_seq.._id; done_upto marks progress).
COUNT_JOBS = "SELECT coalesce(sum(_id - done_upto), 0) FROM jobs_v1"
FIRST_JOB = "SELECT (SELECT done_upto + 1 FROM jobs_v1 WHERE revived = 0 ORDER BY _id LIMIT 1)"


@pytest.fixture
async def make_queue(tmp_path: Path) -> AsyncIterator[QueueFactory]:
    """Open a DurableQueue on this test's directory; whatever is still open is closed."""
    opened: list[DurableQueue] = []

    async def factory(**options: Any) -> DurableQueue:
        queue = DurableQueue(tmp_path / "queue", **options)
        await queue.open()
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        await queue.close()


WAIT_S = 30.0  # a hang guard, not a speed requirement


async def take(queue: DurableQueue) -> Job:
    """The next job; a test failure saying so if none comes within the hang guard."""
    try:
        return await asyncio.wait_for(queue.next_job(), timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"no job from next_job() within {WAIT_S} s "
                             f"(last_seq {queue.last_seq}, pending {queue.pending})") from None


async def take_all(queue: DurableQueue, count: int, *, ack: bool = True) -> list[Job]:
    """Take `count` jobs in order (acknowledging each one unless told not to)."""
    jobs = []
    for _ in range(count):
        job = await take(queue)
        if ack:
            queue.ack(job)
        jobs.append(job)
    return jobs


async def timed(step: Awaitable[T]) -> tuple[T, tuple[float, float]]:
    """`step`'s result, with wall-clock readings taken just before and just after it."""
    before = time.time()
    result = await step
    return result, (before, time.time())


def table_rows(queue_dir: Path, sql: str) -> Any:
    """Run one query on the queue file with a connection of our own (the queue is closed)."""
    conn = sqlite3.connect(queue_dir / QUEUE_FILE)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


async def test_put_answers_consecutive_seqs(make_queue: QueueFactory) -> None:
    queue = await make_queue()

    first = await queue.put([{"n": 1}])
    second = await queue.put([{"n": 2}, {"n": 3}, {"n": 4}])
    third = await queue.put([{"n": 5}, {"n": 6}])

    assert first == Accepted(accepted=1, first_seq=1, last_seq=1)
    assert second == Accepted(accepted=3, first_seq=2, last_seq=4)
    assert third == Accepted(accepted=2, first_seq=5, last_seq=6)
    assert queue.last_seq == 6
    assert queue.pending == 6


PAYLOADS: list[Any] = [
    {"Event": "GoalScored", "Data": {"GoalSpeed": 87.1, "Scorer": {"Name": "é ✓ 🚀"}}},
    {"big": 2**62, "neg": -1, "float": 1e-9, "list": [True, False, None, [], {}]},
    {},
    {"id": "x", "nested": {"a": {"b": {"c": [1, [2, [3]]]}}}},
]


@pytest.mark.parametrize("reopen", [False, True], ids=["from-memory", "from-disk"])
async def test_next_job_hands_out_jobs_in_seq_order_with_their_fields(
    make_queue: QueueFactory, reopen: bool
) -> None:
    queue = await make_queue()
    before = time.time()
    await queue.put(PAYLOADS[:1], source="plugin", sequence=10)
    await queue.put(PAYLOADS[1:3], source="stats-api", sequence=7)
    await queue.put(PAYLOADS[3:], received_at=1234.5)
    after = time.time()
    if reopen:
        await queue.close()
        queue = await make_queue()

    jobs = await take_all(queue, 4)

    assert [(j.seq, j.payload, j.source, j.sequence, j.attempt) for j in jobs] == [
        (1, PAYLOADS[0], "plugin", 10, 1),
        (2, PAYLOADS[1], "stats-api", 7, 1),
        (3, PAYLOADS[2], "stats-api", 8, 1),
        (4, PAYLOADS[3], None, None, 1),
    ]
    assert all(before <= j.received_at <= after for j in jobs[:3])
    assert jobs[1].received_at == jobs[2].received_at  # one request, one arrival time
    assert jobs[3].received_at == 1234.5


async def test_unacknowledged_jobs_come_back_first_after_reopen(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    for n in range(1, 7):
        await queue.put([{"n": n}])
    one, two, three = await take_all(queue, 3, ack=False)
    queue.ack(one)
    queue.ack(two)  # three is in flight: taken, never acknowledged
    await queue.close()

    queue = await make_queue()
    stats = await queue.stats()
    replayed = await take_all(queue, 4)

    assert (stats.pending, stats.processed_total, stats.last_seq) == (4, 2, 6)
    assert [(j.seq, j.payload, j.attempt) for j in replayed] == [
        (3, {"n": 3}, 1), (4, {"n": 4}, 1), (5, {"n": 5}, 1), (6, {"n": 6}, 1),
    ]
    assert replayed[0].received_at == three.received_at


async def test_seqs_are_never_reused_even_when_every_row_was_acknowledged(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}, {"n": 2}, {"n": 3}])
    await take_all(queue, 3)
    await queue.close()
    assert table_rows(tmp_path / "queue", COUNT_JOBS) == 0

    queue = await make_queue()
    assert queue.last_seq == 3
    accepted = await queue.put([{"n": 4}])
    job = await take(queue)
    queue.ack(job)
    await queue.close()

    queue = await make_queue()
    again = await queue.put([{"n": 5}, {"n": 6}])

    assert accepted == Accepted(accepted=1, first_seq=4, last_seq=4)
    assert job.seq == 4
    assert again == Accepted(accepted=2, first_seq=5, last_seq=6)
    assert [j.seq for j in await take_all(queue, 2)] == [5, 6]


async def test_seqs_are_never_reused_after_the_last_job_was_dead_lettered(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}, {"n": 2}])
    queue.ack(await take(queue))
    await queue.dead_letter(await take(queue), "RuntimeError: no")
    await queue.close()

    queue = await make_queue()
    accepted = await queue.put([{"n": 3}])

    assert accepted.first_seq == 3
    assert (await take(queue)).seq == 3


async def check_concurrent_puts(queue: DurableQueue, rng: random.Random, tag: str,
                                requests: int) -> list[tuple[Accepted, list[dict[str, Any]]]]:
    """Fire `requests` puts of 1-5 events at once; check every answer against its request."""
    bodies = [
        [{"tag": tag, "r": r, "k": k} for k in range(rng.randint(1, 5))]
        for r in range(requests)
    ]
    answers = await asyncio.gather(*(queue.put(body) for body in bodies))
    for answer, body in zip(answers, bodies, strict=True):
        assert not answer.replayed
        assert answer.accepted == len(body)
        assert answer.last_seq - answer.first_seq + 1 == len(body)
    return list(zip(answers, bodies, strict=True))


@pytest.mark.parametrize("ack_interval_ms", [0, 50])
async def test_concurrent_puts_get_disjoint_contiguous_ranges_kept_in_body_order(
    make_queue: QueueFactory, ack_interval_ms: int
) -> None:
    rng = random.Random(ack_interval_ms)
    queue = await make_queue(ack_interval_ms=ack_interval_ms)
    seen: list[Job] = []

    async def consume(count: int) -> None:
        for job in await take_all(queue, count):
            seen.append(job)

    # Round one with nothing consuming; round two while a consumer acknowledges jobs, so
    # acknowledgements and requests share transactions.
    results = await check_concurrent_puts(queue, rng, "a", 200)
    total_a = sum(a.accepted for a, _ in results)
    consumer = asyncio.create_task(consume(total_a))
    results += await check_concurrent_puts(queue, rng, "b", 200)
    try:
        await asyncio.wait_for(consumer, timeout=WAIT_S)
    except TimeoutError:
        raise AssertionError(f"round one's {total_a} jobs not consumed within {WAIT_S} s "
                             f"({len(seen)} were)") from None
    total = sum(a.accepted for a, _ in results)
    await consume(total - total_a)

    ranges = sorted((a.first_seq, a.last_seq) for a, _ in results)
    assert ranges[0][0] == 1
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert first == last + 1, f"ranges not contiguous/disjoint around seq {last}"
    assert ranges[-1][1] == total == queue.last_seq
    by_seq = {a.first_seq + k: event for a, body in results for k, event in enumerate(body)}
    assert [j.seq for j in seen] == list(range(1, total + 1))
    assert [j.payload for j in seen] == [by_seq[seq] for seq in range(1, total + 1)]
    stats = await queue.stats()
    assert (stats.pending, stats.processed_total) == (0, total)


async def test_a_repeated_idempotency_key_replays_the_first_answer_and_stores_nothing(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 0}])
    first = await queue.put([{"n": 1}, {"n": 2}], key="req-1")
    repeat = await queue.put([{"other": True}], key="req-1")
    both = await asyncio.gather(
        queue.put([{"n": 3}], key="req-2"), queue.put([{"n": 3}], key="req-2")
    )
    pending = queue.pending
    await queue.close()

    queue = await make_queue()
    after_reopen = await queue.put([{"n": 1}, {"n": 2}], key="req-1")
    fresh = await queue.put([{"n": 4}], key="req-3")
    jobs = await take_all(queue, 5)

    assert first == Accepted(accepted=2, first_seq=2, last_seq=3)
    assert repeat == dataclasses.replace(first, replayed=True)
    assert sorted(a.replayed for a in both) == [False, True]
    assert both[0].first_seq == both[1].first_seq == both[0].last_seq == 4
    assert pending == 4
    assert after_reopen == dataclasses.replace(first, replayed=True)
    assert fresh == Accepted(accepted=1, first_seq=5, last_seq=5)
    assert [j.payload for j in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]


async def test_max_pending_refuses_what_would_exceed_it(make_queue: QueueFactory) -> None:
    queue = await make_queue(max_pending=5)
    await queue.put([{"n": 1}, {"n": 2}, {"n": 3}])

    with pytest.raises(QueueFullError):
        await queue.put([{"n": 4}, {"n": 5}, {"n": 6}])
    await queue.put([{"n": 4}, {"n": 5}])
    with pytest.raises(QueueFullError):
        await queue.put([{"n": 6}])
    queue.ack(await take(queue))
    await queue.put([{"n": 6}])

    assert queue.last_seq == 6
    assert queue.pending == 5


async def test_a_full_queue_still_answers_a_repeated_idempotency_key(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue(max_pending=2)
    first = await queue.put([{"n": 1}, {"n": 2}], key="batch-1")

    repeat = await queue.put([{"n": 1}, {"n": 2}], key="batch-1")
    with pytest.raises(QueueFullError):
        await queue.put([{"n": 3}], key="batch-2")

    assert repeat == dataclasses.replace(first, replayed=True)
    assert queue.pending == 2


async def test_a_full_disk_refuses_whole_requests_and_stores_nothing_of_them(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    queue = await make_queue(max_bytes=1 << 20)
    pad = "x" * 5000
    accepted = 0
    full = None
    for r in range(400):  # about 1 MiB of 50 KB requests fills the file
        try:
            answer = await queue.put([{"r": r, "k": k, "pad": pad} for k in range(10)])
        except StorageFullError as exc:
            full = exc
            break
        assert answer.first_seq == accepted + 1
        accepted += answer.accepted
    group = await asyncio.gather(
        *(queue.put([{"g": g, "pad": pad}] * 4) for g in range(5)), return_exceptions=True
    )
    last_seq = queue.last_seq
    await take_all(queue, 60)
    await queue.close()
    rows = table_rows(tmp_path / "queue", COUNT_JOBS)

    queue = await make_queue(max_bytes=1 << 20)
    after = await queue.put([{"after": True}])
    jobs = await take_all(queue, last_seq - 60 + 1)

    assert full is not None, "1 MiB never filled up"
    assert accepted > 0
    stored_of_group = sum(a.accepted for a in group if isinstance(a, Accepted))
    assert all(isinstance(a, Accepted | StorageFullError) for a in group), group
    assert last_seq == accepted + stored_of_group
    assert rows == last_seq - 60
    assert after.first_seq == last_seq + 1
    assert [j.seq for j in jobs] == list(range(61, last_seq + 2))


async def test_max_pending_holds_while_a_commit_is_being_written(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    """Requests arriving while earlier ones are still being committed count too."""
    queue = await make_queue(max_pending=20)
    tasks = []
    for n in range(200):
        tasks.append(asyncio.create_task(queue.put([{"n": n}])))
        await asyncio.sleep(0)  # let the committer take what is there, then add more
    results = await asyncio.gather(*tasks, return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Accepted)]
    refused = [r for r in results if isinstance(r, QueueFullError)]
    pending = queue.pending
    await queue.close()

    assert len(accepted) + len(refused) == 200
    # Nothing is consumed: the first 20 requests fill the bound exactly, the rest are
    # refused whether or not the earlier ones were committed yet.
    assert [r.first_seq for r in results[:20] if isinstance(r, Accepted)] == list(range(1, 21))
    assert len(accepted) == 20, f"{len(accepted)} accepted with max_pending=20"
    assert pending == 20
    assert table_rows(tmp_path / "queue", COUNT_JOBS) == 20


async def test_put_after_close_raises_queue_closed(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}])
    await queue.close()

    with pytest.raises(QueueClosedError):
        await queue.put([{"n": 2}])
    assert not queue.is_open


async def test_close_commits_the_requests_still_waiting(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    waiting = [asyncio.create_task(queue.put([{"n": n}])) for n in range(1, 4)]
    await asyncio.sleep(0)  # the puts are queued for the next group commit
    await queue.close()
    answers = [t.result() for t in waiting]

    queue = await make_queue()
    jobs = await take_all(queue, 3)

    assert [a.first_seq for a in answers] == [1, 2, 3]
    assert [j.payload for j in jobs] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_record_attempt_survives_reopen(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}, {"n": 2}])
    job = await take(queue)
    assert job.attempt == 1
    await queue.record_attempt(job)
    await queue.close()

    queue = await make_queue()
    second_try = await take(queue)
    await queue.record_attempt(second_try)
    await queue.close()

    queue = await make_queue()
    third_try = await take(queue)
    queue.ack(third_try)
    next_job = await take(queue)

    assert (second_try.seq, second_try.attempt) == (1, 2)
    assert (third_try.seq, third_try.attempt) == (1, 3)
    assert (next_job.seq, next_job.attempt) == (2, 1)


async def test_dead_letter_moves_the_job_aside_and_the_next_one_follows(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": 1}], source="plugin", sequence=41)
    await queue.put([{"n": 2}, {"n": 3}])
    before = time.time()
    doomed = await take(queue)
    doomed = dataclasses.replace(doomed, attempt=3)
    await queue.dead_letter(doomed, "ValueError: no such player")
    after = time.time()
    following = await take(queue)
    dead = await queue.dead_letters()
    await queue.close()

    queue = await make_queue()
    dead_after_reopen = await queue.dead_letters()
    head_after_reopen = await take(queue)

    assert following.seq == 2
    assert len(dead) == 1
    letter = dead[0]
    assert (letter.seq, letter.payload, letter.source, letter.sequence) == (
        1, {"n": 1}, "plugin", 41)
    assert (letter.attempts, letter.error) == (3, "ValueError: no such player")
    assert letter.received_at == doomed.received_at
    assert before <= letter.failed_at <= after
    assert dead_after_reopen == dead
    assert head_after_reopen.seq == 2  # seq 2 was never acknowledged; 1 does not return
    assert (await queue.stats()).dead == 1


async def test_stats_follow_puts_acks_and_dead_letters_across_reopen(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    await queue.put([{"n": n} for n in range(1, 5)])
    put_5 = await timed(queue.put([{"n": 5}]))
    put_6 = await timed(queue.put([{"n": n} for n in range(6, 11)]))
    await take_all(queue, 3)
    await queue.dead_letter(await take(queue), "KeyError: 'x'")
    in_flight = await take(queue)

    busy, busy_at = await timed(queue.stats())
    queue.ack(in_flight)
    idle = await queue.stats()
    await queue.close()
    queue = await make_queue()
    reopened, reopened_at = await timed(queue.stats())
    await take_all(queue, 5)
    drained = await queue.stats()
    await queue.close()
    queue = await make_queue()
    drained_reopened = await queue.stats()

    assert (busy.pending, busy.in_flight, busy.dead, busy.processed_total, busy.last_seq) == (
        5, 1, 1, 3, 10)
    # The oldest job not done is seq 5 (in flight), and after the reopen seq 6: the age is
    # the wall clock's, between the readings around its put and those around stats().
    assert busy.oldest_pending_age_s is not None
    assert (busy_at[0] - put_5[1][1] <= busy.oldest_pending_age_s
            <= busy_at[1] - put_5[1][0]), (put_5, busy_at, busy)
    assert (idle.pending, idle.in_flight, idle.dead, idle.processed_total) == (5, 0, 1, 4)
    assert (reopened.pending, reopened.in_flight, reopened.dead, reopened.processed_total,
            reopened.last_seq) == (5, 0, 1, 4, 10)
    assert reopened.oldest_pending_age_s is not None
    assert (reopened_at[0] - put_6[1][1] <= reopened.oldest_pending_age_s
            <= reopened_at[1] - put_6[1][0]), (put_6, reopened_at, reopened)
    assert (drained.pending, drained.dead, drained.processed_total, drained.last_seq) == (
        0, 1, 9, 10)
    assert drained.oldest_pending_age_s is None
    assert drained_reopened == drained


async def test_processed_jobs_leave_no_rows_behind(
    make_queue: QueueFactory, tmp_path: Path
) -> None:
    queue = await make_queue()
    for start in range(0, 300, 30):
        await queue.put([{"n": n} for n in range(start, start + 30)])
    await take_all(queue, 120)
    await queue.dead_letter(await take(queue), "boom")
    await take_all(queue, 129)
    pending = queue.pending
    await queue.close()

    rows = table_rows(tmp_path / "queue", COUNT_JOBS)
    first = table_rows(tmp_path / "queue", FIRST_JOB)
    dead = table_rows(tmp_path / "queue", "SELECT count(*) FROM dead_letters")

    assert pending == 50
    assert rows == pending
    assert first == 251
    assert dead == 1


@pytest.mark.parametrize("keys_per_statement", [3, 128])
async def test_one_batch_of_acknowledgements_deletes_exactly_its_rows(
    make_queue: QueueFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    keys_per_statement: int,
) -> None:
    """Acknowledged rows go by one DELETE per _DELETE_KEYS keys, a short chunk padded
    with its last key: 8 rows in one batch are 3 + 3 + 2 (padded) with 3 per statement.
    Exactly those rows go, and the count of processed jobs follows them."""
    monkeypatch.setattr("collector.queue.table._DELETE_KEYS", keys_per_statement)
    queue = await make_queue(ack_interval_ms=60_000)  # one batch, written at close
    for r in range(10):
        await queue.put([{"r": r, "k": k} for k in range(2)])  # one commit, one row each
    await take_all(queue, 16)
    await queue.close()
    rows = table_rows(tmp_path / "queue", "SELECT count(*) FROM jobs_v1")

    queue = await make_queue()
    stats = await queue.stats()
    rest = await take_all(queue, 4)

    assert rows == 2
    assert stats.processed_total == 16
    assert [j.seq for j in rest] == [17, 18, 19, 20]
    assert [j.payload for j in rest] == [{"r": 8, "k": 0}, {"r": 8, "k": 1},
                                         {"r": 9, "k": 0}, {"r": 9, "k": 1}]


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_durability_setting_opens_a_wal_file(
    make_queue: QueueFactory, tmp_path: Path, durability: str
) -> None:
    queue = await make_queue(durability=durability)
    await queue.put([{"n": 1}])
    await queue.close()
    other = "full" if durability == "normal" else "normal"
    queue = await make_queue(durability=other)  # the same file under the other setting
    job = await take(queue)
    await queue.close()

    assert job.payload == {"n": 1}
    assert table_rows(tmp_path / "queue", "PRAGMA journal_mode") == "wal"


async def test_a_backlog_beyond_the_memory_window_comes_out_complete_and_in_order(
    make_queue: QueueFactory,
) -> None:
    queue = await make_queue()
    expected: list[Any] = []
    for start in range(0, 6000, 25):
        body = [{"n": n} for n in range(start, start + 25)]
        await queue.put(body)
        expected += body
    late: list[asyncio.Task[Accepted]] = []
    late_bodies: list[list[dict[str, Any]]] = []
    seen: list[Job] = []

    # Consume everything; every so often new requests arrive while the backlog drains
    # (some while the consumer reads pages from disk, some near the end of the backlog).
    index = 0
    while len(seen) < 6000 + 3 * len(late_bodies):
        job = await take(queue)
        queue.ack(job)
        seen.append(job)
        index += 1
        if index % 450 == 0 or 5990 <= index <= 6005:
            body = [{"late": index, "k": k} for k in range(3)]
            late_bodies.append(body)
            late.append(asyncio.create_task(queue.put(body)))
        if index % 97 == 0:
            await asyncio.sleep(0)
    answers = await asyncio.gather(*late)

    assert [j.seq for j in seen] == list(range(1, len(seen) + 1))
    assert [j.payload for j in seen[:6000]] == expected
    by_seq = {a.first_seq + k: e for a, b in zip(answers, late_bodies, strict=True)
              for k, e in enumerate(b)}
    assert min(by_seq) == 6001
    assert [j.payload for j in seen[6000:]] == [by_seq[s] for s in sorted(by_seq)]
    assert (await queue.stats()).pending == 0


@pytest.mark.parametrize("rows_per_statement", [64, 2], ids=["one-statement", "chunked"])
async def test_a_group_commit_split_into_many_rows_keeps_order_and_content(
    make_queue: QueueFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    rows_per_statement: int,
) -> None:
    """A group commit bigger than one row is written as several rows, by one multi-row
    INSERT or (beyond _INSERT_ROWS rows) by several in one transaction; either way the
    jobs come back complete and in order, also from the file after a reopen."""
    monkeypatch.setattr("collector.queue.table._ROW_MAX_BYTES", 600)
    monkeypatch.setattr("collector.queue.table._INSERT_ROWS", rows_per_statement)
    queue = await make_queue()
    bodies = [[{"r": r, "k": k, "pad": "x" * 100} for k in range(3)] for r in range(12)]
    # Created together, the puts wait for the same commit: 12 requests of ~400 bytes
    # make one group of at least 6 rows.
    answers = await asyncio.gather(*(queue.put(body) for body in bodies))
    first_half = await take_all(queue, 18)
    await queue.close()
    row_count = table_rows(tmp_path / "queue", "SELECT count(*) FROM jobs_v1")

    queue = await make_queue()
    second_half = await take_all(queue, 18)

    assert [(a.first_seq, a.last_seq) for a in answers] == [
        (3 * r + 1, 3 * r + 3) for r in range(12)]
    expected = [event for body in bodies for event in body]
    seen = first_half + second_half
    assert [j.seq for j in seen] == list(range(1, 37))
    assert [j.payload for j in seen] == expected
    # ~400 bytes a request and 600 a row: one request a row, 12 rows; the 6 whose jobs
    # were all acknowledged are gone.
    assert row_count == 6, "the group was not split into one row per request"
