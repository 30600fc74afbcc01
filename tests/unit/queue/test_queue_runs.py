"""A run of jobs in flight (handed to a handler with batch()): the line as peek and export
show it is the order the worker runs it in, and a revived dead letter never heads a run."""

from __future__ import annotations

from pathlib import Path

from collector.queue import DurableQueue


async def test_peek_lists_a_whole_run_in_flight_before_a_dead_letter_revived_meanwhile(
    tmp_path: Path
) -> None:
    queue = DurableQueue(tmp_path, ack_interval_ms=0)
    await queue.open()
    try:
        await queue.put([{"n": 0}])
        first = queue.take_nowait()
        assert first is not None
        await queue.dead_letter(first, "failed")  # seq 1 is a dead letter
        await queue.put([{"n": n} for n in range(1, 11)])  # seqs 2..11
        head = queue.take_nowait()
        assert head is not None
        run = [head, *queue.take_more(4)]
        assert [job.seq for job in run] == [2, 3, 4, 5, 6]
        assert (await queue.stats()).in_flight == 5
        await queue.retry_dead([1])  # back in its old place: next after what is in flight
        peeked = [job.seq for job in await queue.peek(20)]
        exported = [job.seq async for job in queue.pending_jobs()]
        for taken in run:
            queue.ack(taken)
        order = [taken.seq for taken in run]
        while (following := queue.take_nowait()) is not None:
            order.append(following.seq)
            queue.ack(following)
        assert order == [2, 3, 4, 5, 6, 1, 7, 8, 9, 10, 11]
        assert peeked == order
        assert exported == order
    finally:
        await queue.close()


async def test_a_revived_dead_letter_is_not_the_head_of_a_run(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path, ack_interval_ms=0)
    await queue.open()
    try:
        await queue.put([{"n": 0}])
        first = queue.take_nowait()
        assert first is not None
        await queue.dead_letter(first, "failed")
        await queue.put([{"n": n} for n in range(1, 6)])
        await queue.retry_dead([1])
        head = queue.take_nowait()
        assert head is not None
        assert head.seq == 1  # the revived one comes first, alone
        assert queue.take_more(10) == []
        queue.ack(head)
        second = queue.take_nowait()
        assert second is not None
        assert [second.seq, *(job.seq for job in queue.take_more(10))] == [2, 3, 4, 5, 6]
    finally:
        await queue.close()
