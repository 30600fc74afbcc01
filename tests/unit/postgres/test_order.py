"""One total order across nodes: 4 writers on their own connections append while the
leader's reader drains; the reader must see every committed event once, in seq order.

The control runs the same load without the append lock: then seq order is not commit
order, and the same reader skips rows that commit late. The control must skip, or the
run proves nothing about the reader (make it heavier, never weaker).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson

from collector.postgres import LogReader, Request, SharedLog
from tests.support.postgres import PoolFactory

WRITERS = 4


@dataclass
class Run:
    """What the writers were told (seq -> event) and what the reader saw, in order."""

    appended: dict[int, bytes] = field(default_factory=dict)
    per_writer: list[list[int]] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    payloads: dict[int, object] = field(default_factory=dict)


async def _load(make_pool: PoolFactory, *, serialise: bool, transactions: int,
                requests: int, events: int) -> Run:
    """WRITERS writers (one connection each, as separate nodes) append `transactions`
    group commits of `requests` requests of `events` events; the leader's reader
    (`seq > cursor ORDER BY seq`) drains meanwhile, then once more after the last commit."""
    run = Run(per_writer=[[] for _ in range(WRITERS)])
    logs = [SharedLog(await make_pool(max_size=1), serialise=serialise) for _ in range(WRITERS)]
    reader = SharedLog(await make_pool(max_size=1))
    done = asyncio.Event()

    async def write(w: int) -> None:
        for t in range(transactions):
            batch = [Request([orjson.dumps({"w": w, "t": t, "r": r, "e": e})
                              for e in range(events)], received_at=float(t))
                     for r in range(requests)]
            for request, answer in zip(batch, await logs[w].append(batch), strict=True):
                seqs = list(range(answer.first_seq, answer.last_seq + 1))
                if serialise:
                    assert len(seqs) == events  # a request's seqs are consecutive
                    run.appended.update(zip(seqs, request.events, strict=True))
                    run.per_writer[w] += seqs

    async def read() -> None:
        leaders_reader = LogReader(reader, after=0, page=10_000)
        while True:
            finished = done.is_set()  # read once more after the writers are done
            jobs = await leaders_reader.take()
            for job in jobs:
                run.seen.append(job.seq)
                run.payloads[job.seq] = job.payload
            if finished and not jobs:
                return
            await asyncio.sleep(0)

    reading = asyncio.create_task(read())
    await asyncio.gather(*(write(w) for w in range(WRITERS)))
    done.set()
    await reading
    return run


async def test_reader_sees_every_committed_event_once_in_seq_order(
        make_pool: PoolFactory) -> None:
    run = await _load(make_pool, serialise=True, transactions=150, requests=4, events=5)
    total = WRITERS * 150 * 4 * 5
    assert sorted(run.appended) == list(range(1, total + 1)), "seqs have a gap or repeat"
    assert len(run.seen) == len(set(run.seen)), "an event was read twice"
    assert run.seen == sorted(run.seen), "read out of seq order"
    missed = sorted(set(run.appended) - set(run.seen))
    assert not missed, f"the reader skipped {len(missed)} committed events: {missed[:10]}"
    assert run.seen == list(range(1, total + 1))
    for seq, event in run.appended.items():  # each seq holds the event its answer named
        assert run.payloads[seq] == orjson.loads(event)
    for seqs in run.per_writer:  # one node's later commits come later in the order
        assert seqs == sorted(seqs)


async def test_control_without_the_append_lock_the_same_reader_skips(
        make_pool: PoolFactory) -> None:
    run = await _load(make_pool, serialise=False, transactions=300, requests=2, events=1)
    total = WRITERS * 300 * 2
    assert len(run.seen) == len(set(run.seen))
    missed = total - len(run.seen)
    print(f"control: the naive reader missed {missed} of {total} committed events "  # noqa: T201
          f"({100 * missed / total:.1f} %)")
    assert missed > 0, "the control did not skip: make the run heavier"


async def test_the_leaders_reader_waits_for_the_next_commit(make_pool: PoolFactory) -> None:
    log = SharedLog(await make_pool())
    reader = LogReader(log, after=0, poll_s=0.005)
    waiting = asyncio.create_task(reader.wait())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await log.append([Request([b'{"n":1}', b'{"n":2}'], 1.0)])
    jobs = await asyncio.wait_for(waiting, 5)
    assert [(j.seq, j.payload) for j in jobs] == [(1, {"n": 1}), (2, {"n": 2})]
    assert await reader.take() == []
