"""A 202 means fsynced: tests that see the disk, not just the page cache (issue 14).

A SIGKILL keeps the page cache, so the kill tests cannot tell a commit that was fsynced
from one that was not. These tests look where they can:

* the real daemon under strace: for every answered request, a sync of queue.db-wal
  returned after the commit holding its events was written to the WAL and before its
  202 was written to the socket, with acknowledgement-only commits (which lower
  `synchronous` for themselves) landing between requests;
* the queue's own connection, in process: `PRAGMA synchronous` after every kind of
  commit is FULL (2) with `durability = "full"` and NORMAL (1) with "normal";
* `durability = "normal"` (and "full") keeps every acknowledged event across kill -9.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest

from collector.jobs import Job
from collector.queue import QUEUE_FILE, DurableQueue, read_pending, recover_file
from tests.support.model import GATE_ENV, RECORD_ENV, event_id, request
from tests.support.model import wait_until as wait_until_sync
from tests.support.server import ServerProcess, wait_until
from tests.support.sync import (
    Answered,
    TracedServer,
    commits_between,
    locate,
    parse_trace,
    unsynced_answers,
)

Durability = Literal["full", "normal"]
EXPECTED_SYNCHRONOUS: dict[Durability, int] = {"full": 2, "normal": 1}


# -- strace's escapes, for the checks of the trace reader itself -----------------------------

def strace_escape(data: bytes) -> str:
    """`data` as strace 6 prints a string argument (C escapes, shortest octal)."""
    named = {9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 34: '\\"', 92: "\\\\"}
    out = []
    for i, byte in enumerate(data):
        if byte in named:
            out.append(named[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        elif i + 1 < len(data) and 0x30 <= data[i + 1] <= 0x37:
            out.append(f"\\{byte:03o}")  # an octal digit follows: all three digits
        else:
            out.append(f"\\{byte:o}")
    return '"' + "".join(out) + '"'


WAL = "/d/queue.db-wal"


def frame_lines(tid: int, marker: bytes, first_seq: int) -> dict[str, str]:
    """The lines of one fsynced commit of a request and of its 202."""
    page = b"\r\0\0\0\1?\254\0" + b"\0" * 40 + b'[[1.0,null,null,[{"id":"' + marker + b'"}]]]'
    header = b"\0\0\0\2\0\0\0\0" + bytes(range(200, 216))
    commit = b"\0\0\0\3\0\0\0\t" + bytes(range(48, 64))  # octal digits after \t, \0...
    answer = (b'HTTP/1.1 202 Accepted\r\nContent-Length: 41\r\n\r\n{"accepted":1,"first_seq":%d,'
              b'"last_seq":%d}' % (first_seq, first_seq))
    t = f"{tid}  06:03:40.35"
    return {
        "header": f"{t}2835 pwrite64(15<{WAL}>, {strace_escape(header)}, 24, 16440) = 24",
        "page": f"{t}2919 pwrite64(15<{WAL}>, {strace_escape(page)}, 16384, 16464) = 16384",
        "commit": f"{t}3043 pwrite64(15<{WAL}>, {strace_escape(commit)}, 24, 32848) = 24",
        "commit_page": f"{t}3083 pwrite64(15<{WAL}>, {strace_escape(page)[:30]}\"..., "
                       "16384, 32872 <unfinished ...>",
        "commit_page_done": f"{t}3090 <... pwrite64 resumed>) = 16384",
        "sync": f"{t}3193 fdatasync(15<{WAL}>) = 0",
        "sync_start": f"{t}3193 fdatasync(15<{WAL}> <unfinished ...>",
        "sync_done": f"{t}3300 <... fdatasync resumed>) = 0",
        "other_sync": f"{t}3193 fdatasync(18</d/stats.db-wal>) = 0",
        "eventfd": "1  06:03:40.353100 write(9<anon_inode:[eventfd]>, \"\\1\\0\\0\\0\", 8) = 8",
        "answer": f"1  06:03:40.354146 write(22<socket:[31560]>, {strace_escape(answer)}, "
                  f"{len(answer)}) = {len(answer)}",
    }


def problems_of(order: list[str], marker: bytes = b"SYNCMARK0001Z") -> list[str]:
    lines = frame_lines(7, marker, 1)
    trace = "\n".join(lines[name] for name in order) + "\n"
    return unsynced_answers(parse_trace(trace), WAL, [(marker, 1)])


COMMIT = ["header", "page", "commit", "commit_page", "eventfd", "commit_page_done"]


def test_the_trace_reader_decodes_strace_escapes() -> None:
    data = bytes(range(256)) + b"\0" + b"7" + b"\t1" + b'"\\'
    (call,) = parse_trace(f"5  06:00:00.000001 write(3</x>, {strace_escape(data)}, 9) = 9\n")
    assert (call.name, call.path, call.result, call.data) == ("write", "/x", 9, data)


def test_the_trace_reader_accepts_an_answer_after_a_completed_wal_sync() -> None:
    assert problems_of([*COMMIT, "sync", "eventfd", "answer"]) == []
    assert problems_of([*COMMIT, "sync_start", "eventfd", "sync_done", "answer"]) == []


@pytest.mark.parametrize("order", [
    pytest.param([*COMMIT, "answer"], id="no-sync"),
    pytest.param([*COMMIT, "other_sync", "answer"], id="sync-of-another-file"),
    pytest.param([*COMMIT, "sync_start", "answer", "sync_done"], id="sync-returns-after"),
    pytest.param(["header", "page", "sync", "commit", "commit_page", "commit_page_done",
                  "answer"], id="sync-before-the-commit-frame"),
    pytest.param([*COMMIT, "answer", "sync"], id="sync-after-the-answer"),
])
def test_the_trace_reader_refuses_an_answer_without_a_wal_sync_before_it(
    order: list[str],
) -> None:
    (problem,) = problems_of(order)
    assert problem.startswith("SYNCMARK0001Z (seq 1): its 202 went out at trace line "), problem


def test_the_trace_reader_says_when_a_request_is_not_in_the_trace() -> None:
    order = [*COMMIT, "sync", "answer"]
    assert problems_of(order, marker=b"SYNCMARK0002Z") == []  # the marker is the request's
    lines = frame_lines(7, b"SYNCMARK0002Z", 1)
    calls = parse_trace("\n".join(lines[name] for name in order))
    assert unsynced_answers(calls, WAL, [(b"SYNCMARK0003Z", 1)]) == [
        f"SYNCMARK0003Z: no write to {WAL} holds its events"]
    assert unsynced_answers(calls, WAL, [(b"SYNCMARK0002Z", 2)]) == [
        "SYNCMARK0002Z: no answer with first_seq 2 written to a socket"]


# -- the real daemon under strace ----------------------------------------------------------

def strace_or_skip() -> str:
    """strace's path; without it a failure in CI (CI=true), a skip elsewhere."""
    found = shutil.which("strace")
    if found is not None:
        return found
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail("strace is not installed: the fsync test cannot run (apt-get install strace)")
    pytest.skip("strace is not installed (Debian package strace); in CI this test fails")


def marked_events(n: int, count: int) -> tuple[bytes, list[dict[str, Any]]]:
    """`count` events of request `n`; the first one's id is the request's marker."""
    marker = f"SYNCMARK{n:04d}Z"
    events = [{"id": marker if k == 0 else f"{marker}-{k}", "Event": "UpdateState",
               "Data": {"MatchGuid": "sync", "Players": [{"Name": f"p{k}", "Score": n}]}}
              for k in range(count)]
    return marker.encode(), events


def post_marked(port: int, n: int, shape: str) -> tuple[bytes, int, int]:
    """POST request `n` as one event, an array or NDJSON; (marker, first_seq, events)."""
    count = {"single": 1, "array": 3, "ndjson": 2, "pair": 2}[shape]
    marker, events = marked_events(n, count)
    if shape == "ndjson":
        body = b"\n".join(json.dumps(e).encode() for e in events) + b"\n"
        ctype = "application/x-ndjson"
    else:
        body = json.dumps(events[0] if shape == "single" else events).encode()
        ctype = "application/json"
    answer = request(port, "POST", "/v1/events", body, {"Content-Type": ctype})
    assert answer.status == 202, (n, answer)
    assert answer.body["accepted"] == count, (n, answer)
    return marker, int(answer.body["first_seq"]), count


def processed_on_disk(data_dir: Path) -> int:
    """processed_total as committed in the running server's queue file."""
    conn = sqlite3.connect(f"file:{data_dir / QUEUE_FILE}?mode=ro", uri=True, timeout=5)
    try:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'processed_total'"
                                ).fetchone()
        return int(value)
    finally:
        conn.close()


def acknowledged_on_disk(data_dir: Path, total: int) -> None:
    """Wait until the server committed the acknowledgements of `total` events."""
    wait_until_sync(lambda: processed_on_disk(data_dir) == total,
                    f"the acknowledgements of {total} events committed")


@pytest.mark.slow
def test_every_202_follows_an_fsync_of_the_wal_after_its_commit(
    data_dir: Path, tmp_path: Path
) -> None:
    """The whole path, seen at the system-call level: no 202 before its events' commit
    frame was fsynced, also right after acknowledgement-only commits (which run with
    synchronous=NORMAL and must set FULL back)."""
    strace = strace_or_skip()
    server = TracedServer(strace, data_dir, tmp_path / "serve.strace", args=["--handler", "noop"])
    requests: list[tuple[bytes, int]] = []
    paused: list[tuple[bytes, bytes]] = []  # (before, after): an ack-only commit in between
    events = 0
    try:
        server.start()
        shapes = ["single", "array", "ndjson", "single", "pair", "array", "single"]
        # 1. Each request after the worker's acknowledgements of the one before were
        #    committed on their own (the worker commits them ack_interval_ms = 50 after the
        #    job; a poll of the file sees it).
        for n, shape in enumerate(shapes):
            marker, first, count = post_marked(server.port, n, shape)
            requests.append((marker, first))
            events += count
            acknowledged_on_disk(data_dir, events)
            if n:
                paused.append((requests[-2][0], marker))
        # 2. Back to back: commits of events, some with acknowledgements in them.
        for n in range(len(shapes), len(shapes) + 8):
            marker, first, count = post_marked(server.port, n, shapes[n % len(shapes)])
            requests.append((marker, first))
            events += count
        # 3. A burst of concurrent requests: group commits of several requests.
        with ThreadPoolExecutor(max_workers=8) as pool:
            burst = list(pool.map(lambda n: post_marked(server.port, n, shapes[n % 3]),
                                  range(100, 110)))
        requests += [(marker, first) for marker, first, _count in burst]
        events += sum(count for _marker, _first, count in burst)
        # 4. Once more after an acknowledgement-only commit.
        acknowledged_on_disk(data_dir, events)
        marker, first, _count = post_marked(server.port, 200, "single")
        paused.append((requests[-1][0], marker))
        requests.append((marker, first))
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, server.output()[-3000:]

    wal = str((data_dir / f"{QUEUE_FILE}-wal").resolve())
    calls = parse_trace(server.trace.read_text(errors="replace"))
    problems = unsynced_answers(calls, wal, requests)
    assert not problems, f"{len(problems)} of {len(requests)} answers:\n" + "\n".join(problems)

    # The acknowledgement-only commits really came between those requests.
    found: dict[bytes, Answered] = {}
    for marker, first in requests:
        where = locate(calls, wal, marker, first)
        assert isinstance(where, Answered), where
        found[marker] = where
    no_ack_commit = [(a.decode(), b.decode()) for a, b in paused
                     if not commits_between(calls, wal, found[a].answered, found[b].stored)]
    assert not no_ack_commit, f"no commit between these requests: {no_ack_commit}"


# -- PRAGMA synchronous on the queue's own connection ----------------------------------------

def commit_kind(name: str, args: tuple[Any, ...]) -> str:
    """A label for a call of one of the table's writing methods."""
    if name != "commit":
        return name
    puts, acks = args[0], args[1]
    parts = (["acks"] if acks else []) + (["events"] if puts else [])
    parts += ["key"] if any(p.key is not None for p in puts) else []
    parts += ["revive"] if any(p.revive is not None for p in puts) else []
    return "commit:" + "+".join(parts)


class SyncProbe:
    """Reads PRAGMA synchronous right after each writing call of the queue's table, in
    the queue's thread on its connection, before anything else can run there."""

    WRITERS = ("commit", "set_attempts", "bury", "revive", "_set_aside", "drop_dead",
               "purge_keys")

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def attach(self, queue: DurableQueue) -> None:
        table = queue._table
        assert table is not None
        for name in self.WRITERS:
            setattr(table, name, self._wrap(table, name, getattr(table, name)))

    def _wrap(self, table: Any, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            (value,) = table._conn.execute("PRAGMA synchronous").fetchone()
            self.seen.append((commit_kind(name, args), value))
            return result

        return probed


async def synchronous(queue: DurableQueue) -> int:
    """PRAGMA synchronous on the queue's connection, run in the queue's own thread."""
    table = queue._table
    assert table is not None
    loop = asyncio.get_running_loop()
    row = await loop.run_in_executor(
        queue._executor, lambda: table._conn.execute("PRAGMA synchronous").fetchone())
    return int(row[0])


async def take(queue: DurableQueue) -> Job:
    return await asyncio.wait_for(queue.next_job(), timeout=10)


async def acks_committed(queue: DurableQueue) -> None:
    """Hand the acknowledgements so far to the writer and wait for their commit."""
    queue._push_acks()
    await queue._acks_written()


@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_synchronous_stays_as_configured_after_every_kind_of_commit(
    tmp_path: Path, durability: Durability
) -> None:
    expected = EXPECTED_SYNCHRONOUS[durability]
    qdir = tmp_path / "queue"
    probe = SyncProbe()
    loop = asyncio.get_running_loop()
    # Acknowledgements are committed only when this test says so.
    options: dict[str, Any] = {"durability": durability, "ack_interval_ms": 60_000}
    queue = DurableQueue(qdir, **options)
    await queue.open()
    steps: list[tuple[str, int]] = [("open", await synchronous(queue))]
    probe.attach(queue)

    async def after(step: str) -> None:
        steps.append((step, await synchronous(queue)))

    try:
        await queue.put([{"n": 1}])  # seq 1
        await queue.put([{"n": 2}, {"n": 3}])  # seqs 2, 3 (one row)
        await after("fresh events")
        await queue.put([{"n": 4}], key="key-4")  # seq 4
        await after("events with an Idempotency-Key")

        queue.ack(await take(queue))  # seq 1
        await acks_committed(queue)
        await after("acknowledgements only")

        queue.ack(await take(queue))  # seq 2
        # Hold the queue's thread so that the acknowledgements and a request meet in
        # the outbox and go into one transaction.
        gate = threading.Event()
        held = loop.run_in_executor(queue._executor, gate.wait)
        try:
            queue._push_acks()
            put = asyncio.create_task(queue.put([{"n": 5}]))  # seq 5
            await wait_until(lambda: len(queue._outbox) == 2, timeout=10,
                             what="acknowledgements and a request in the outbox")
        finally:
            gate.set()  # never leave the queue's thread blocked
        await held
        await put
        await after("acknowledgements and events")

        queue.ack(await take(queue))  # seq 3, committed with the attempt below
        failing = await take(queue)  # seq 4
        await queue.record_attempt(failing)
        await after("a failed attempt")
        await queue.dead_letter(dataclasses.replace(failing, attempt=2), "boom")
        await after("a dead letter")
        assert [j.seq for j in await queue.retry_dead([4])] == [4]
        await after("a dead letter revived in place")
        again = await take(queue)
        assert again.seq == 4
        await queue.dead_letter(again, "boom again")
        assert [j.seq for j in await queue.retry_dead([4], at_tail=True)] == [6]
        await after("a dead letter revived at the tail")
        five = await take(queue)
        assert five.seq == 5
        await queue.dead_letter(five, "dropped next")
        assert await queue.drop_dead([5]) == 1
        await after("a dead letter dropped")
        await queue.purge_idempotency_keys()
        await after("Idempotency-Keys purged")

        await queue.put([{"n": "damaged"}])  # seq 7
        await queue.put([{"n": "after"}])  # seq 8
    finally:
        await queue.close()

    # A row the worker cannot decode is set aside when it is read from the file.
    conn = sqlite3.connect(qdir / QUEUE_FILE)
    with conn:
        assert conn.execute("UPDATE jobs_v1 SET data = ? WHERE _id = 7", (b"[1, 2",)
                            ).rowcount == 1
    conn.close()
    queue = DurableQueue(qdir, **options)
    await queue.open()
    try:
        await after("reopen")
        probe.attach(queue)
        assert (await take(queue)).seq == 6
        assert await queue.dead_letter_get(7) is not None
        await after("a damaged row set aside")
    finally:
        await queue.close()

    report = recover_file(qdir)
    assert report.next_seq == 9, report
    queue = DurableQueue(qdir, **options)
    await queue.open()
    try:
        await after("recovery, then open")
        probe.attach(queue)
        await queue.put([{"n": 9}])
        await after("fresh events after recovery")
        for _ in range(3):  # seqs 6, 8, 9
            queue.ack(await take(queue))
        await acks_committed(queue)
        await after("acknowledgements only after recovery")
    finally:
        await queue.close()

    kinds = {kind for kind, _value in probe.seen}
    assert kinds >= {
        "commit:events", "commit:events+key", "commit:acks", "commit:acks+events",
        "commit:events+revive", "set_attempts", "bury", "revive", "drop_dead", "purge_keys",
        "_set_aside",
    }, kinds
    wrong_steps = [(step, value) for step, value in steps if value != expected]
    wrong_calls = [(kind, value) for kind, value in probe.seen if value != expected]
    wants = f"durability={durability} wants synchronous={expected}"
    assert not wrong_steps, f"{wants}; after these steps it was not: {wrong_steps}"
    assert not wrong_calls, f"{wants}; after these calls it was not: {wrong_calls}"


# -- kill -9 ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_kill_9_keeps_every_acknowledged_event_in_seq_order(
    server_process: Callable[..., ServerProcess], data_dir: Path, tmp_path: Path,
    durability: Durability,
) -> None:
    """With a handler that never finishes, everything answered 202 must be in the file
    the kill left, in seq order, whatever `durability` says."""
    record = tmp_path / "record.log"
    server = server_process(
        args=["--handler", "tests.support.model:held"],
        env={GATE_ENV: str(tmp_path / "gate-never-opened"), RECORD_ENV: str(record),
             "COLLECTOR_QUEUE_DURABILITY": durability})
    server.start()
    acknowledged: dict[int, str] = {}

    def post(n: int) -> None:
        shape = ["single", "array", "ndjson", "pair"][n % 4]
        marker, first, count = post_marked(server.port, n, shape)
        ids = [marker.decode()] + [f"{marker.decode()}-{k}" for k in range(1, count)]
        acknowledged.update({first + k: ids[k] for k in range(count)})

    for n in range(12):
        post(n)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(post, range(100, 112)))
    opened = [json.loads(line) for line in server.output().splitlines()
              if '"queue_opened"' in line]
    server.kill()

    assert [o["durability"] for o in opened] == [durability], opened
    assert not record.exists(), "the handler finished a job; nothing must be acknowledged"
    jobs = read_pending(data_dir)
    assert [(j.seq, event_id(j)) for j in jobs] == sorted(acknowledged.items())
    assert [j.seq for j in jobs] == list(range(1, len(jobs) + 1))
