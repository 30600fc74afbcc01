"""kill -9 under load: every 202-answered event is processed, in seq order, replays only
right after a restart and only from the last acknowledged job on."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.queue import QUEUE_FILE
from tests.support.crash import drain_and_stop, until
from tests.support.recorder import DELAY_ENV, FILE_ENV, Record, read_records
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

ServerFactory = Callable[..., ServerProcess]
SENDERS = 6
FIRST_JOB = "SELECT (SELECT done_upto + 1 FROM jobs_v1 WHERE revived = 0 ORDER BY _id LIMIT 1)"


@dataclass
class Load:
    """What the load generator saw: event id -> seq for every 202, and anything odd."""

    accepted: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    requests: int = 0


async def sender(session: aiohttp.ClientSession, url: str, rng: random.Random, prefix: str,
                 load: Load, stop: asyncio.Event, max_requests: int) -> None:
    """POST singles and small arrays of uniquely numbered events until told to stop."""
    for n in range(max_requests):
        if stop.is_set():
            return
        count = rng.choice([1, 1, 1, 2, 3, 4])
        events: list[dict[str, Any]] = [{"id": f"{prefix}.{n}.{k}", "Event": "UpdateState",
                   "Data": {"Players": [{"Name": "x" * rng.randint(1, 40), "Score": n}]}}
                  for k in range(count)]
        body: Any = events[0] if count == 1 and rng.random() < 0.7 else events
        try:
            async with session.post(f"{url}/v1/events", json=body) as resp:
                status = resp.status
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            return  # the server died under us: these events may or may not be stored
        load.requests += 1
        if status != 202:
            load.unexpected.append(f"{status} {answer}")
            continue
        if answer["accepted"] != count or answer["last_seq"] - answer["first_seq"] + 1 != count:
            load.unexpected.append(f"answer {answer} for {count} events")
        for k, event in enumerate(events):
            load.accepted[event["id"]] = answer["first_seq"] + k


def records_of(path: Path, pid: int) -> int:
    """How many jobs the process `pid` has recorded so far."""
    return sum(1 for r in read_records(path) if r.pid == pid)


def queue_head(data_dir: Path, *, read_only: bool) -> int | None:
    """The first job still in the queue file (None when it holds none)."""
    path = data_dir / QUEUE_FILE
    if read_only:  # the server is running: look without touching anything
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    else:  # the server is dead: recover its WAL like the next start would
        conn = sqlite3.connect(path, timeout=5)
    try:
        head: int | None = conn.execute(FIRST_JOB).fetchone()[0]
        return head
    finally:
        conn.close()






@dataclass
class History:
    """The processes in start order and the queue head left behind by each kill."""

    pids: list[int] = field(default_factory=list)
    heads: list[int | None] = field(default_factory=list)


def check_history(records: list[Record], history: History, accepted: dict[str, int],
                  last_seq: int) -> int:
    """Check the record file against the contract; return how many jobs were replayed.

    * Each process ran its jobs one at a time in seq order with no gap and no repeat.
    * A process started with the queue's head as the kill left it on disk (the first job
      not acknowledged), and that head was never past what the handler had done: a job
      is acknowledged only after its handler returned, so nothing is skipped.
    * So repeats form one contiguous run at the start of a process, and after removing
      them the seqs are exactly 1..last_seq.
    * Every 202-answered event was handled under the seq its answer gave.
    """
    ids: dict[int, str] = {}
    for r in records:
        assert r.kind == "done"
        assert r.pid in history.pids, f"record from an unknown process: {r}"
        assert ids.setdefault(r.seq, r.event_id) == r.event_id, f"seq {r.seq} changed event"
    missing = {eid: seq for eid, seq in accepted.items() if ids.get(seq) != eid}
    assert not missing, f"{len(missing)} accepted events never handled, e.g. {list(missing)[:5]}"

    top = 0  # highest seq handled so far
    replayed = 0
    for index, pid in enumerate(history.pids):
        run = [r.seq for r in records if r.pid == pid]
        if not run:
            continue
        assert run == list(range(run[0], run[0] + len(run))), f"process {index}: out of order"
        if index > 0:
            head = history.heads[index - 1]
            expected_first = top + 1 if head is None else head
            assert run[0] == expected_first, (
                f"process {index} started at seq {run[0]}, the queue head after the kill "
                f"was {head} and seqs up to {top} had been handled")
        assert run[0] <= top + 1, f"process {index} skipped seqs {top + 1}..{run[0] - 1}"
        replayed += max(0, min(top, run[-1]) - run[0] + 1)
        top = max(top, run[-1])
    assert top == last_seq, f"handled up to seq {top}, the queue's last seq is {last_seq}"
    return replayed


async def run_under_load(server: ServerProcess, record_file: Path, rng: random.Random,
                         cycle: int, load: Load, kill_after: int) -> None:
    """Load the server with several senders; SIGKILL it once `kill_after` more events got
    a 202 and it has handled jobs itself."""
    assert server.proc is not None
    pid = server.proc.pid
    stop = asyncio.Event()
    before = len(load.accepted)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        senders = [
            asyncio.create_task(sender(session, server.url, random.Random(rng.random()),
                                       f"c{cycle}s{s}", load, stop, max_requests=400))
            for s in range(SENDERS)
        ]
        await until(lambda: len(load.accepted) - before >= kill_after
                    or all(t.done() for t in senders), "enough events accepted")
        await until(lambda: records_of(record_file, pid) > 0, "the server handles jobs")
        server.kill()
        stop.set()
        try:  # a hang guard: each request has its own 20 s client timeout
            await asyncio.wait_for(asyncio.gather(*senders), timeout=60)
        except TimeoutError:
            raise AssertionError("the senders did not finish within 60 s of the kill") from None


async def test_kill_9_under_load_three_times_loses_nothing_and_keeps_order(
    server_process: ServerFactory, data_dir: Path, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    record_file = tmp_path / "record.log"
    env = {FILE_ENV: str(record_file)}
    load = Load()
    history = History()

    for cycle in range(3):
        server = server_process(args=["--handler", "tests.support.recorder:record"], env=env)
        server.start()
        assert server.proc is not None
        history.pids.append(server.proc.pid)
        await run_under_load(server, record_file, rng, cycle, load,
                             kill_after=rng.randint(150, 700))
        history.heads.append(queue_head(data_dir, read_only=False))
    final = server_process(args=["--handler", "tests.support.recorder:record"], env=env)
    final.start()
    assert final.proc is not None
    history.pids.append(final.proc.pid)
    stats = await drain_and_stop(final)

    context = f"seed={seed} heads={history.heads}"
    assert not load.unexpected, f"{context}: {load.unexpected[:5]}"
    assert len(load.accepted) >= 450, context
    check_history(read_records(record_file), history, load.accepted, stats["last_seq"])
    assert stats["dead"] == 0, context
    assert stats["processed_total"] == stats["last_seq"], context  # each acknowledged once
    assert stats["last_seq"] >= max(load.accepted.values()), context


async def test_replays_start_at_the_last_acknowledged_job_after_a_kill(
    server_process: ServerFactory, data_dir: Path, tmp_path: Path
) -> None:
    """Acknowledgements are committed in groups: kill between two groups, and the jobs
    handled since the last group come again, first thing after the restart, in order."""
    record_file = tmp_path / "record.log"
    env = {FILE_ENV: str(record_file), DELAY_ENV: "0.004",
           "COLLECTOR_QUEUE_ACK_INTERVAL_MS": "300"}
    history = History()
    accepted: dict[str, int] = {}
    replay_lengths: list[int] = []

    for cycle in range(3):
        server = server_process(args=["--handler", "tests.support.recorder:record"], env=env)
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        history.pids.append(pid)
        load = Load()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(
                sender(session, server.url, random.Random(cycle * 10 + s), f"c{cycle}s{s}",
                       load, asyncio.Event(), max_requests=40)
                for s in range(4)
            ))
        assert not load.unexpected, load.unexpected[:5]
        accepted.update(load.accepted)
        start_head = queue_head(data_dir, read_only=True) or 0

        def acked_and_more(pid: int = pid, start_head: int = start_head) -> bool:
            head = queue_head(data_dir, read_only=True)
            done = [r.seq for r in read_records(record_file) if r.pid == pid]
            # An acknowledgement group of this process is on disk, and jobs handled
            # after it are not yet acknowledged.
            return head is not None and head > start_head and bool(done) and done[-1] >= head

        await until(acked_and_more, "a committed acknowledgement group and jobs after it")
        server.kill()
        head = queue_head(data_dir, read_only=False)
        history.heads.append(head)
        handled = [r.seq for r in read_records(record_file) if r.pid == pid]
        assert head is not None
        replay_lengths.append(max(0, handled[-1] - head + 1))

    final = server_process(args=["--handler", "tests.support.recorder:record"], env=env)
    final.start()
    assert final.proc is not None
    history.pids.append(final.proc.pid)
    stats = await drain_and_stop(final)
    records = read_records(record_file)
    assert stats["processed_total"] == stats["last_seq"]

    replayed = check_history(records, history, accepted, stats["last_seq"])
    assert replayed == sum(replay_lengths)
    assert max(replay_lengths) > 0, "no kill landed between acknowledgement groups"
    for index, head in enumerate(history.heads):
        assert head is not None
        before_kill = {r.seq for r in records if r.pid in history.pids[: index + 1]}
        again = [r.seq for r in records if r.pid == history.pids[index + 1]]
        assert set(range(1, head)) <= before_kill  # acknowledged only after being handled
        assert again[:replay_lengths[index]] == list(range(head, head + replay_lengths[index]))
