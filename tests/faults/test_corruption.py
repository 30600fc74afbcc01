"""A damaged queue file is never deleted or silently skipped.

The daemon refuses to start on it with one line naming the file and the command that
fixes it; `collector check` says sound (exit 0, with the numbers) or damaged (exit 1);
`collector recover` keeps the damaged file under another name and salvages every
readable job, in order and with its seq, into a fresh file. The damage is real: a
file truncated, pages overwritten with garbage, a torn WAL tail, a row whose content
SQLite finds sound but the worker could not decode, a file that is not SQLite at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.files import locked_data_dir
from collector.queue import (
    QUEUE_FILE,
    DurableQueue,
    NothingToRecoverError,
    inspect_file,
    read_pending,
    recover_file,
)
from tests.support.model import cli_env, one_line, post_events, request, run_cli, wait_until
from tests.support.server import free_port

PAD = "y" * 200
WAL_HEADER = 32
FRAME_HEADER = 24

CRASH_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from collector.queue import DurableQueue

async def main() -> None:
    queue = DurableQueue(Path(sys.argv[1]))
    await queue.open()
    for b in range(int(sys.argv[2])):
        await queue.put([{"id": f"c{b}.{k}", "pad": "z" * 200} for k in range(10)])
    os._exit(0)  # like kill -9: no close, the WAL and the unclean mark stay

asyncio.run(main())
"""


# -- making queue files -------------------------------------------------------------------

async def build(data_dir: Path, batches: int, per_batch: int = 10) -> dict[int, Any]:
    """A cleanly closed queue holding batches * per_batch jobs; seq -> payload."""
    queue = DurableQueue(data_dir)
    await queue.open()
    payloads: dict[int, Any] = {}
    try:
        for b in range(batches):
            events = [{"id": f"e{b}.{k}", "pad": PAD} for k in range(per_batch)]
            accepted = await queue.put(events)
            for k, event in enumerate(events):
                payloads[accepted.first_seq + k] = event
    finally:
        await queue.close()
    return payloads


def crash_writer(data_dir: Path, batches: int) -> None:
    """A process that opens the queue, stores `batches` requests and dies without closing."""
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(data_dir), str(batches)],
                            env=cli_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr


def page_size(path: Path) -> int:
    with path.open("rb") as fh:
        fh.seek(16)
        size = int.from_bytes(fh.read(2), "big")
    return 65536 if size == 1 else size


def smash(path: Path, pages: list[int], seed: int = 7) -> None:
    """Overwrite whole pages (numbered from 1) with random bytes."""
    rng = random.Random(seed)
    size = page_size(path)
    with path.open("r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * size)
            fh.write(rng.randbytes(size))


def middle_pages(path: Path, count: int) -> list[int]:
    pages = path.stat().st_size // page_size(path)
    return [pages // 2 + 7 * i for i in range(count)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def salvaged(data_dir: Path) -> dict[int, Any]:
    """seq -> payload of every job in the (recovered) queue file, checked to be in order."""
    jobs = read_pending(data_dir)
    seqs = [job.seq for job in jobs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    return {job.seq: job.payload for job in jobs}


def in_ranges(seq: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= seq <= b for a, b in ranges)


async def next_seq_after_recovery(data_dir: Path) -> int:
    """Open the recovered queue like the daemon does and store one event: its seq."""
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        return (await queue.put([{"id": "after"}])).first_seq
    finally:
        await queue.close()


# -- the daemon refuses a damaged file ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("stop", ["clean", "unclean"])
async def test_daemon_refuses_a_damaged_file_naming_it_and_the_fix(
    data_dir: Path, tmp_path: Path, stop: str
) -> None:
    await build(data_dir, batches=300)
    if stop == "unclean":
        crash_writer(data_dir, batches=0)  # the file was not closed: checked at open
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 2))

    result = run_cli("serve", "--handler", "noop", "--port", "0", "--data-dir", str(data_dir),
                     cwd=tmp_path)

    assert result.returncode == 1, result.stdout[-2000:]
    line = one_line(result.stderr)
    assert str(path) in line
    assert f"collector recover --data-dir {data_dir}" in line
    assert path.exists()  # never deleted, never moved by the daemon
    assert [p.name for p in data_dir.glob("queue.db.damaged*")] == []


@pytest.mark.slow
async def test_a_refused_start_leaves_the_damaged_file_byte_for_byte(
    data_dir: Path, tmp_path: Path
) -> None:
    await build(data_dir, batches=300)
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 2))
    before = digest(path)
    result = run_cli("serve", "--handler", "noop", "--port", "0", "--data-dir", str(data_dir),
                     cwd=tmp_path)
    assert result.returncode == 1
    assert digest(path) == before


@pytest.mark.slow
async def test_serve_check_refuses_content_the_worker_could_not_decode(
    data_dir: Path, tmp_path: Path
) -> None:
    """SQLite finds the file sound, but a row holds bytes that are not our JSON: the quick
    check cannot see it, the full one can, and `serve --check` stops there."""
    await build(data_dir, batches=20)
    path = data_dir / QUEUE_FILE
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE jobs_v1 SET data = ? WHERE _id = (SELECT min(_id) + 50 FROM "
                     "jobs_v1) OR _id = (SELECT max(_id) FROM jobs_v1 WHERE _id < 60)",
                     (b"\x00not json",))
    conn.close()

    quick = run_cli("check", "--data-dir", str(data_dir), cwd=tmp_path)
    assert quick.returncode == 0, quick.stdout
    full = run_cli("check", "--full", "--data-dir", str(data_dir), cwd=tmp_path)
    assert full.returncode == 1, full.stdout
    assert "undecodable" in full.stdout
    assert "collector recover" in full.stdout

    checked = run_cli("serve", "--check", "--handler", "noop", "--port", "0",
                      "--data-dir", str(data_dir), cwd=tmp_path)
    assert checked.returncode == 1, checked.stdout[-2000:]
    line = one_line(checked.stderr)
    assert str(path) in line
    assert "collector recover" in line


# -- collector check ----------------------------------------------------------------------

async def test_check_says_sound_with_the_numbers_or_damaged(data_dir: Path,
                                                            tmp_path: Path) -> None:
    missing = run_cli("check", "--data-dir", str(data_dir), cwd=tmp_path)
    assert missing.returncode == 0
    assert "no queue file" in missing.stdout

    await build(data_dir, batches=30)  # 300 jobs
    sound = run_cli("check", "--data-dir", str(data_dir), cwd=tmp_path)
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "is sound" in sound.stdout
    assert "300 pending" in sound.stdout
    assert "last seq 300" in sound.stdout
    as_json = run_cli("check", "--full", "--json", "--data-dir", str(data_dir), cwd=tmp_path)
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["sound"] is True
    assert (report["pending"], report["dead"], report["last_seq"]) == (300, 0, 300)
    assert report["clean_shutdown"] is True

    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 1))
    before = digest(path)
    damaged = run_cli("check", "--data-dir", str(data_dir), cwd=tmp_path)
    assert damaged.returncode == 1
    assert "DAMAGED" in damaged.stdout
    assert f"collector recover --data-dir {data_dir}" in damaged.stdout
    assert digest(path) == before  # checking changes nothing
    damaged_json = run_cli("check", "--json", "--data-dir", str(data_dir), cwd=tmp_path)
    assert damaged_json.returncode == 1
    assert json.loads(damaged_json.stdout)["sound"] is False


# -- collector recover --------------------------------------------------------------------

async def test_recover_a_truncated_file_keeps_the_readable_prefix(data_dir: Path) -> None:
    payloads = await build(data_dir, batches=300)
    path = data_dir / QUEUE_FILE
    original = path.read_bytes()
    half = len(original) // 2
    path.write_bytes(original[:half])

    report = recover_file(data_dir)

    assert report.damaged_moved_to.read_bytes() == original[:half]  # kept as it was
    assert not inspect_file(data_dir, full=True).problems
    got = salvaged(data_dir)
    assert got, "nothing salvaged from the first half"
    assert list(got) == list(range(1, len(got) + 1))  # a prefix, in order
    assert all(got[s] == payloads[s] for s in got)
    assert report.jobs_salvaged == len(got)
    assert report.unreadable_ranges == [(len(got) + 1, 3000)]
    assert report.next_seq == 3001
    assert await next_seq_after_recovery(data_dir) == 3001


async def test_recover_around_garbage_pages_in_the_middle(data_dir: Path) -> None:
    payloads = await build(data_dir, batches=300)
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 3))

    report = recover_file(data_dir)

    got = salvaged(data_dir)
    ranges = report.unreadable_ranges
    assert ranges, "the garbage pages held jobs"
    for seq in payloads:  # every job is either salvaged intact or reported unreadable
        assert (seq in got) != in_ranges(seq, ranges), seq
        if seq in got:
            assert got[seq] == payloads[seq]
    assert len(got) >= 0.9 * len(payloads)  # a few pages cost a few rows, not the file
    assert report.next_seq == 3001
    assert await next_seq_after_recovery(data_dir) == 3001


async def test_recover_when_the_job_table_root_page_is_garbage(data_dir: Path) -> None:
    """Nothing of the table can be found; the salvage gives up in bounded time, keeps the
    seq high-water mark, and the file is still moved aside, not lost."""
    await build(data_dir, batches=300)
    path = data_dir / QUEUE_FILE
    conn = sqlite3.connect(path)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_v1'"
                           ).fetchone()
    conn.close()
    smash(path, [root])

    report = recover_file(data_dir)

    assert report.damaged_moved_to.exists()
    assert report.jobs_salvaged == 0
    assert report.unreadable_ranges == [(1, 3000)]
    assert report.next_seq == 3001


async def test_recover_a_file_that_is_not_sqlite(data_dir: Path, tmp_path: Path) -> None:
    data_dir.mkdir(parents=True)
    path = data_dir / QUEUE_FILE
    junk = b"this is not a database\n" * 500
    path.write_bytes(junk)

    refused = run_cli("serve", "--handler", "noop", "--port", "0",
                      "--data-dir", str(data_dir), cwd=tmp_path)
    assert refused.returncode == 1
    assert str(path) in one_line(refused.stderr)
    assert path.read_bytes() == junk

    result = run_cli("recover", "--json", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["damaged_moved_to"]).read_bytes() == junk
    assert report["jobs_salvaged"] == 0
    # The highest seq ever used is unknown: new seqs start far above any old one, so no
    # handler that remembers applied seqs mistakes a new job for an old one.
    assert report["next_seq"] > 10**8
    assert await next_seq_after_recovery(data_dir) == report["next_seq"]


@pytest.mark.parametrize("tear", ["garbage_appended", "last_frame_cut"])
async def test_a_torn_wal_tail_is_not_damage(data_dir: Path, tear: str) -> None:
    """Power lost while a commit was being written leaves a torn WAL tail. SQLite drops
    the incomplete commit (it was never acknowledged: the 202 waits for the fsync) and
    keeps every earlier one; the file is sound and opens."""
    crash_writer(data_dir, batches=40)
    wal = data_dir / f"{QUEUE_FILE}-wal"
    frame = FRAME_HEADER + page_size(data_dir / QUEUE_FILE)
    size = wal.stat().st_size
    assert size > WAL_HEADER + 3 * frame, "the crash left no WAL to tear"
    if tear == "garbage_appended":
        with wal.open("ab") as fh:
            fh.write(random.Random(3).randbytes(frame // 2))
        expected = 400
    else:
        with wal.open("r+b") as fh:
            fh.truncate(size - frame // 2)
        expected = 390  # the last commit (one request of 10 events) is gone, nothing else

    report = inspect_file(data_dir, full=True)
    assert not report.problems
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        assert queue.pending == expected
        assert queue.last_seq == expected
    finally:
        await queue.close()
    assert list(salvaged(data_dir)) == list(range(1, expected + 1))


async def test_recover_drops_only_the_rows_the_worker_could_not_decode(data_dir: Path) -> None:
    payloads = await build(data_dir, batches=30)
    conn = sqlite3.connect(data_dir / QUEUE_FILE)
    with conn:
        (key, first) = conn.execute(
            "SELECT _id, first_seq FROM jobs_v1 ORDER BY _id LIMIT 1 OFFSET 10").fetchone()
        conn.execute("UPDATE jobs_v1 SET data = ? WHERE _id = ?", (b"[1, 2", key))
    conn.close()
    assert inspect_file(data_dir, full=True).problems

    report = recover_file(data_dir)

    assert report.unreadable_ranges == [(first, key)]
    got = salvaged(data_dir)
    assert set(got) == {s for s in payloads if not first <= s <= key}
    assert all(got[s] == payloads[s] for s in got)
    assert not inspect_file(data_dir, full=True).problems


async def test_recover_of_a_sound_file_keeps_everything(data_dir: Path) -> None:
    """Jobs with their failed attempts, dead letters, Idempotency-Keys, processed_total."""
    queue = DurableQueue(data_dir)
    await queue.open()
    keyed = await queue.put([{"id": "k"}], key="the-key")
    await queue.put([{"id": f"j{n}"} for n in range(5)])
    job = await asyncio.wait_for(queue.next_job(), 10)
    queue.ack(job)  # seq 1 processed
    failing = await asyncio.wait_for(queue.next_job(), 10)
    await queue.dead_letter(failing, "boom")  # seq 2 dead
    head = await asyncio.wait_for(queue.next_job(), 10)
    head = type(head)(seq=head.seq, payload=head.payload, received_at=head.received_at,
                      attempt=2)
    await queue.record_attempt(head)  # seq 3 failed twice
    await queue.close()
    before = inspect_file(data_dir)
    pending_before = read_pending(data_dir)

    report = recover_file(data_dir)

    after = inspect_file(data_dir)
    assert (after.pending, after.dead, after.last_seq, after.processed_total) == (
        before.pending, before.dead, before.last_seq, before.processed_total)
    assert read_pending(data_dir) == pending_before
    assert pending_before[0].attempt == 3
    assert (report.keys_salvaged, report.dead_salvaged, report.unreadable_ranges) == (1, 1, [])
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        again = await queue.put([{"id": "k"}], key="the-key")
        assert (again.first_seq, again.replayed) == (keyed.first_seq, True)
        assert [d.seq for d in await queue.dead_letters()] == [2]
    finally:
        await queue.close()


async def test_two_recoveries_in_one_second_keep_both_damaged_files(data_dir: Path) -> None:
    await build(data_dir, batches=50)
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 1))
    first_damage = path.read_bytes()
    first = recover_file(data_dir)
    smash(path, [2])
    second_damage = path.read_bytes()
    second = recover_file(data_dir)
    assert first.damaged_moved_to != second.damaged_moved_to
    assert first.damaged_moved_to.read_bytes() == first_damage
    assert second.damaged_moved_to.read_bytes() == second_damage


async def test_recover_dry_run_changes_nothing(data_dir: Path, tmp_path: Path) -> None:
    await build(data_dir, batches=50)
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 1))
    before = digest(path)
    result = run_cli("recover", "--dry-run", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would move" in result.stdout
    assert "nothing was changed" in result.stdout
    assert digest(path) == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["collector.lock", QUEUE_FILE]


async def test_recover_refuses_while_a_daemon_holds_the_data_dir(data_dir: Path,
                                                                tmp_path: Path) -> None:
    await build(data_dir, batches=10)
    path = data_dir / QUEUE_FILE
    smash(path, middle_pages(path, 1))
    before = digest(path)
    with locked_data_dir(data_dir):  # what a running daemon holds
        result = run_cli("recover", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 1
    assert "in use by another collector" in one_line(result.stderr)
    assert digest(path) == before


def test_recover_without_a_queue_file(data_dir: Path, tmp_path: Path) -> None:
    data_dir.mkdir(parents=True)
    with pytest.raises(NothingToRecoverError):
        recover_file(data_dir)
    result = run_cli("recover", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 1
    assert "nothing to recover" in one_line(result.stderr)
    assert not (data_dir / QUEUE_FILE).exists()  # no empty file made up on the way


@pytest.mark.slow
async def test_plain_serve_on_an_undecodable_row_says_what_is_wrong(
    data_dir: Path, tmp_path: Path
) -> None:
    """A row damaged at run time is in the dead letters, raw, with its error, under its
    first pending seq; every other job is processed; the error log line says so."""
    payloads = await build(data_dir, batches=20)
    raw = "[1, 2"
    conn = sqlite3.connect(data_dir / QUEUE_FILE)
    with conn:
        first, done_upto = conn.execute(
            "SELECT first_seq, done_upto FROM jobs_v1 WHERE _id = 100").fetchone()
        conn.execute("UPDATE jobs_v1 SET data = ? WHERE _id = 100", (raw.encode(),))
    conn.close()
    dead_seq, lost = done_upto + 1, 100 - done_upto
    assert (first, dead_seq, lost) == (91, 91, 10)  # the tenth request of ten events
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--handler", "noop", "--port",
             str(port), "--data-dir", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=cli_env(), cwd=tmp_path)
    try:
        wait_until(lambda: _status(port, "/healthz") == 200, "the server answers")
        done = len(payloads) - lost
        wait_until(lambda: _queue(port).get("processed_total") == done,
                   f"{done} jobs processed (all but the damaged row's {lost})", timeout=30)
        queue = _queue(port)
        listed = request(port, "GET", "/v1/dead").body
        ready = request(port, "GET", "/readyz")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert (queue["pending"], queue["dead"], queue["processed_total"], queue["last_seq"]) == (
        0, 1, len(payloads) - lost, len(payloads)), queue
    assert (listed["total"], [d["seq"] for d in listed["dead"]]) == (1, [dead_seq]), listed
    letter = listed["dead"][0]
    assert letter["payload"] == {"undecodable_row": raw, "first_seq": first, "last_seq": 100}
    assert (ready.status, ready.body) == (200, {"status": "ready"})  # the line moved on
    errors = [json.loads(line) for line in log.read_text().splitlines()
              if '"level":"error"' in line]
    assert [(e["event"], e["first_seq"], e["last_seq"], e["action"]) for e in errors] == [
        ("queue_row_damaged", first, 100, f"moved raw to the dead letters as seq {dead_seq}")
    ], errors
    assert errors[0]["error"]  # the decoder's complaint, also the dead letter's error
    assert letter["error"] == (
        f"undecodable queue row (seqs {first}..100, {lost} jobs not done): "
        f"{errors[0]['error']}"), letter


def _queue(port: int) -> dict[str, Any]:
    """GET /v1/queue (an empty dict while the server does not answer)."""
    try:
        answer = request(port, "GET", "/v1/queue", timeout=2)
    except OSError:
        return {}
    body: dict[str, Any] = answer.body
    return body


def _status(port: int, path: str) -> int:
    try:
        return request(port, "GET", path, timeout=2).status
    except OSError:
        return 0


@pytest.mark.slow
def test_check_reads_the_file_of_a_running_daemon_without_disturbing_it(
    server_process: Any, tmp_path: Path
) -> None:
    server = server_process(args=["--handler", "tests.support.model:held"],
                            env={"MODEL_GATE_FILE": str(tmp_path / "never"),
                                 "MODEL_RECORD_FILE": str(tmp_path / "record"),
                                 "COLLECTOR_SERVER_SHUTDOWN_TIMEOUT": "0.2"})
    server.start()
    for n in range(5):
        assert post_events(server.port, [{"id": f"r{n}.{k}"} for k in range(4)]).status == 202
    result = run_cli("check", "--json", "--data-dir", str(server.data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["sound"], report["last_seq"], report["pending"]) == (True, 20, 20)
    assert report["clean_shutdown"] is False  # it is running
    assert post_events(server.port, {"id": "after"}).status == 202
    assert server.terminate() == 0
