"""A worker cancelled (SIGTERM) while the queue writes for it: the write runs on in the
queue's thread, and its acknowledgements are counted once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from collector.queue import DurableQueue


async def _held_thread(queue: DurableQueue) -> threading.Event:
    """Occupy the queue's single thread until the returned event is set, so that the
    next write waits behind it (a window the test controls, not a timing guess)."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    asyncio.get_running_loop().run_in_executor(queue._executor, hold)
    await asyncio.to_thread(started.wait, 30)
    return release


@pytest.mark.parametrize("write", ["record_attempt", "dead_letter"])
async def test_cancelled_while_writing_counts_the_acknowledgements_once(
    tmp_path: Path, write: str
) -> None:
    queue = DurableQueue(tmp_path, ack_interval_ms=60_000)
    await queue.open()
    await queue.put([{"n": 1}, {"n": 2}])
    first = await queue.next_job()
    queue.ack(first)  # held back by the long ack interval: it rides on the next write
    second = await queue.next_job()
    release = await _held_thread(queue)
    if write == "record_attempt":
        task = asyncio.create_task(queue.record_attempt(second))
    else:
        task = asyncio.create_task(queue.dead_letter(second, "failed"))
    await asyncio.sleep(0)  # the write is queued behind the held thread
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await queue.close()

    again = DurableQueue(tmp_path)
    await again.open()
    try:
        stats = await again.stats()
        assert stats.processed_total == 1  # job 1, once (it was 2 before the fix)
        assert stats.dead == (1 if write == "dead_letter" else 0)
        assert stats.pending == (0 if write == "dead_letter" else 1)
    finally:
        await again.close()
