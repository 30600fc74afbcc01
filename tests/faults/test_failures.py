"""Failure branches of the server, the queue, the worker and the stats store, made to
happen for real against real files, file systems and processes.

* A storage error that is not "disk full" on a group commit (the kernel refuses the
  WAL write: RLIMIT_FSIZE, EFBIG, SQLITE_IOERR): `503 storage_unavailable` with
  Retry-After, nothing of the request stored, a 202 for the next POST once it is gone.
* The worker's settle failures (recording a failed attempt, burying a dead letter) and
  its take failure (setting aside a row it cannot decode), each on a full tmpfs: the
  worker lives on, logs it, the job keeps its place and is handled exactly as it
  should be once space returns, in order; /readyz answers 200 throughout (the worker
  runs).
* The worker's settle failure with two handlers: the one that had succeeded is not
  applied again (each handler is applied once per job unless the process dies).
* The stats handler on a full disk: nothing of the job is applied, it is retried and
  applied once when space returns. (SQLite rolls back by itself a transaction whose
  COMMIT, or a cache spill inside it, fails with SQLITE_FULL or SQLITE_IOERR, so a
  storage fault never reaches the ROLLBACK in stats._Db.apply; it guards the exceptions
  raised between BEGIN and COMMIT by the code itself.)
* `collector recover` on a sound file: says so and changes nothing; `--force` rebuilds
  it with every job kept.

Why not `mount -o remount,ro` under the running server: see tests/failurehelpers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector.queue import QUEUE_FILE, DurableQueue, inspect_file, read_pending
from collector.stats.schema import STATS_FILE
from tests.support.diskfull import Intake, check_handled_exactly_the_acknowledged, start_held
from tests.support.failures import Verdicts, file_size_limit, fill, log_events, small_tmpfs
from tests.support.model import (
    Answer,
    post_events,
    read_queue_file,
    request,
    run_cli,
)
from tests.support.model import (
    wait_until as wait_until_sync,
)
from tests.support.server import ClientFactory, ServerProcess, wait_until
from tests.support.stats import GUID, update

ServerFactory = Callable[..., ServerProcess]


def answer_ok(port: int, path: str) -> Answer:
    """GET `path`, which must answer 200."""
    answer = request(port, "GET", path)
    assert answer.status == 200, (path, answer)
    return answer


def queue_numbers(port: int) -> dict[str, int]:
    """/v1/queue without its clock (the age of the oldest job)."""
    body = answer_ok(port, "/v1/queue").body
    return {k: v for k, v in body.items() if k != "oldest_pending_age_s"}


# -- 1. a storage error on commit -----------------------------------------------------------


@pytest.mark.slow
def test_a_storage_error_on_commit_is_503_storage_unavailable_and_passes(
    server_process: ServerFactory, tmp_path: Path, data_dir: Path
) -> None:
    server, reader, gate = start_held(server_process, tmp_path, data_dir)
    assert server.proc is not None
    intake = Intake()
    wal = data_dir / f"{QUEUE_FILE}-wal"
    # The limit is the WAL's length: its next frame is refused. The server's own log
    # file stays far below it, so the server can still say what happened.
    for _ in range(100):
        assert intake.post(server.port, 10).status == 202
        if wal.stat().st_size > server.log_path.stat().st_size + (256 << 10):
            break
    else:
        raise AssertionError("the WAL did not outgrow the log file")
    before = queue_numbers(server.port)

    with file_size_limit(server.proc.pid, wal.stat().st_size):
        refused = [post_events(server.port, [{"id": f"refused{k}", "n": n}
                                             for k in range(5)],
                               {"Idempotency-Key": "refused-key"} if n == 0 else None)
                   for n in range(3)]
        for answer in refused:
            assert answer.status == 503, answer
            assert answer.body["error"] == "storage_unavailable", answer.body
            assert answer.body["detail"]
            assert answer.headers["content-type"].startswith("application/json")
            assert int(answer.headers["retry-after"]) > 0
        intake.refused.extend(f"refused{k}" for k in range(5))
        # Nothing of the refused requests is stored; health and reads still answer.
        assert queue_numbers(server.port) == before
        answer_ok(server.port, "/healthz")
        answer_ok(server.port, "/readyz")
    failures = log_events(server, "storage_failed")
    assert len(failures) == 3, server.output()[-3000:]
    assert all("disk I/O error" in f["error"] for f in failures), failures

    after = intake.post(server.port, 10)  # the limit is gone; no restart
    assert after.status == 202, after
    assert after.body["first_seq"] == before["last_seq"] + 1  # no seq went to the refused
    # The refused request's Idempotency-Key was not kept: it stores its events now.
    retried = intake.post(server.port, 5, key="refused-key")
    assert retried.status == 202, retried
    assert "idempotent-replayed" not in retried.headers

    gate.touch()
    check_handled_exactly_the_acknowledged(reader, intake)
    assert server.terminate() == 0, server.output()[-3000:]


# -- 2. the worker: settle and take failures ------------------------------------------------


def worker_env(verdicts: Verdicts) -> dict[str, str]:
    return {**verdicts.env(), "COLLECTOR_WORKER_MAX_ATTEMPTS": "5",
            "COLLECTOR_WORKER_BACKOFF_BASE": "0.01", "COLLECTOR_WORKER_BACKOFF_CAP": "0.02"}


def wait_for_log(server: ServerProcess, event: str, count: int, timeout: float = 30) -> None:
    """Wait until the server logged `event` `count` times; all the while it must say it
    is ready (200 on /readyz: the worker runs)."""
    def logged() -> bool:
        assert server.proc is not None
        assert server.proc.poll() is None, server.output()[-3000:]
        ready = request(server.port, "GET", "/readyz")
        assert ready.status == 200, (ready, server.output()[-3000:])
        return len(log_events(server, event)) >= count

    wait_until_sync(logged, f"{count} x {event} in the server log", timeout=timeout)


@pytest.mark.slow
def test_the_worker_outlives_failed_settles_and_the_job_keeps_its_place(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    with small_tmpfs(tmp_path / "mnt") as mnt:
        verdicts = Verdicts(tmp_path / "record.log", tmp_path / "control.log")
        server = server_process(args=["--handler", "tests.support.model:gated"],
                                env=worker_env(verdicts))
        server.data_dir = mnt / "data"
        filler = mnt / "filler"
        try:
            server.start()
            for n in range(1, 5):
                assert post_events(server.port, {"id": f"e{n}"}).body["first_seq"] == n
            verdicts.decide(verdicts.expect(1, 1, "job 1"), "ok")

            # Recording a failed attempt fails: the disk is full.
            fill(filler)
            verdicts.decide(verdicts.expect(2, 1, "job 2"), "fail")
            again = verdicts.expect(2, 1, "job 2 again: its failure could not be recorded")
            wait_for_log(server, "worker_settle_failed", 1)
            assert log_events(server, "worker_settle_failed")[0]["seq"] == 2
            answer_ok(server.port, "/readyz")  # the worker runs
            assert answer_ok(server.port, "/v1/queue").body["last_seq"] == 4
            filler.unlink()
            verdicts.decide(again, "fail")  # now it is recorded: attempt 2 follows
            verdicts.decide(verdicts.expect(2, 2, "job 2, attempt 2"), "ok")

            # Burying a dead letter fails: the disk is full again.
            first = verdicts.expect(3, 1, "job 3")
            fill(filler)
            verdicts.decide(first, "perm")
            again = verdicts.expect(3, 1, "job 3 again: it could not be buried")
            wait_for_log(server, "worker_settle_failed", 2)
            assert log_events(server, "worker_settle_failed")[1]["seq"] == 3
            answer_ok(server.port, "/readyz")
            assert answer_ok(server.port, "/v1/dead").body["total"] == 0
            verdicts.no_call_yet()  # job 4 waits behind job 3
            filler.unlink()
            verdicts.decide(again, "perm")
            verdicts.decide(verdicts.expect(4, 1, "job 4"), "ok")

            assert verdicts.starts == [(1, 1), (2, 1), (2, 1), (2, 2), (3, 1), (3, 1), (4, 1)]
            dead = answer_ok(server.port, "/v1/dead").body
            assert [(d["seq"], d["attempts"], d["payload"]) for d in dead["dead"]] == [
                (3, 1, {"id": "e3"})]
            assert dead["dead"][0]["error"].startswith("PermanentError: told to give up")

            def settled() -> bool:
                queue = answer_ok(server.port, "/v1/queue").body
                return (queue["pending"], queue["dead"], queue["processed_total"]) == (0, 1, 3)

            wait_until_sync(settled, "3 processed, 1 dead, none pending")
            assert server.terminate() == 0, server.output()[-3000:]
        finally:
            server.kill()
    assert not log_events(server, "worker_take_failed")


@pytest.mark.slow
def test_a_handler_that_succeeded_is_not_run_again_when_a_settle_fails(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    """Two handlers: `record` succeeds, `gated` fails; recording that failure fails."""
    with small_tmpfs(tmp_path / "mnt") as mnt:
        verdicts = Verdicts(tmp_path / "record.log", tmp_path / "control.log")
        server = server_process(args=["--handler", "tests.support.model:record",
                                      "--handler", "tests.support.model:gated"],
                                env=worker_env(verdicts))
        server.data_dir = mnt / "data"
        filler = mnt / "filler"
        try:
            server.start()
            assert post_events(server.port, {"id": "e1"}).status == 202
            first = verdicts.expect(1, 1, "job 1 at the second handler")
            assert [line.seq for line in verdicts.done] == [1]  # the first handler took it
            fill(filler)
            verdicts.decide(first, "fail")  # recording this failure fails: the disk is full
            again = verdicts.expect(1, 1, "job 1 again: its failure could not be recorded")
            filler.unlink()
            verdicts.decide(again, "ok")
            wait_for_log(server, "worker_settle_failed", 1)
            assert server.terminate() == 0, server.output()[-3000:]
        finally:
            server.kill()
    # The first handler succeeded once and nothing crashed: it must not see job 1 again.
    assert [line.seq for line in verdicts.done] == [1]


async def _queue_of_single_rows(data_dir: Path, count: int) -> None:
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        for n in range(1, count + 1):
            assert (await queue.put([{"id": f"e{n}"}])).first_seq == n
    finally:
        await queue.close()


@pytest.mark.slow
def test_the_worker_outlives_a_failed_take_and_goes_on_in_order(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    """The backlog's second page holds a row the worker cannot decode; setting it aside
    (a write) fails on the full disk, so taking the next job fails until space returns."""
    with small_tmpfs(tmp_path / "mnt") as mnt:
        data_dir = mnt / "data"
        asyncio.run(_queue_of_single_rows(data_dir, 70))  # rows 1..70, one job each
        with contextlib.closing(sqlite3.connect(data_dir / QUEUE_FILE)) as conn:
            conn.execute("UPDATE jobs_v1 SET data = ? WHERE _id = 66", (b"[1, 2",))
            conn.commit()
        server, reader, gate = start_held(server_process, tmp_path, data_dir)
        filler = mnt / "filler"
        done: list[int] = []

        def handled(count: int) -> Callable[[], bool]:
            def check() -> bool:
                done.extend(line.seq for line in reader.drop_unread())
                return len(done) >= count
            return check

        try:
            fill(filler)
            gate.touch()  # the first page (64 rows) is in memory; the second is not
            wait_until_sync(handled(64), "the first page handled")
            wait_for_log(server, "worker_take_failed", 2)
            answer_ok(server.port, "/readyz")  # the worker runs
            answer_ok(server.port, "/healthz")
            assert answer_ok(server.port, "/v1/dead").body["total"] == 0
            assert reader.unread() == []
            assert done == list(range(1, 65))  # job 65 keeps its place

            filler.unlink()
            wait_until_sync(handled(69), "the rest handled")
            assert done == [*range(1, 66), *range(67, 71)]
            letter = answer_ok(server.port, "/v1/dead/66").body
            assert letter["payload"]["undecodable_row"] == "[1, 2"
            assert letter["error"].startswith("undecodable queue row (seqs 66..66")
            assert answer_ok(server.port, "/v1/dead").body["total"] == 1
            assert server.terminate() == 0, server.output()[-3000:]
        finally:
            server.kill()
        assert reader.unread() == []


# -- 3. the stats store rolls back on a full disk ------------------------------------------

_STATS_TABLES = ("applied", "feeds", "matches", "match_teams", "players", "match_players",
                 "goals", "counters")


def stats_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the stats tables, as committed (a read-only connection of its own)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall())  # noqa: S608
                for t in _STATS_TABLES}


async def get_json(client: Any, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, (path, resp.status, await resp.text())
    return await resp.json()


async def test_a_stats_write_on_a_full_disk_applies_nothing_then_the_job_once(
    tmp_path: Path, data_dir: Path, make_client: ClientFactory
) -> None:
    with small_tmpfs(tmp_path / "mnt", size_mb=8) as mnt:
        # stats.db (and so its WAL) on the small file system, the queue on the big one.
        data_dir.mkdir()
        (data_dir / STATS_FILE).symlink_to(mnt / STATS_FILE)
        client = await make_client(worker__handlers=("stats",), worker__backoff_base=0.05,
                                   worker__backoff_cap=0.1, worker__max_attempts=1000)
        filler = mnt / "filler"
        try:
            first = update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0))
            resp = await client.post("/v1/events", json=first)
            assert resp.status == 202
            await wait_until(lambda: (mnt / f"{STATS_FILE}-wal").exists(), timeout=10,
                             what="stats.db's WAL on the small file system")

            async def applied(count: int) -> bool:
                return bool((await get_json(client, "/v1/stats"))["applied"] == count)

            await wait_until(lambda: applied(1), timeout=20, what="the first job applied")
            before = stats_rows(mnt / STATS_FILE)
            assert before["applied"] == [(1, 1)]

            fill(filler)
            second = update(GUID, [("A", "Steam|1|0", 0, 250, 2), ("B", "Steam|2|0", 1, 80, 0)],
                            (2, 0))
            with capture_logs() as logs:
                resp = await client.post("/v1/events", json=second)
                assert resp.status == 202  # the queue is on the other file system

                def failed() -> list[Any]:
                    return [e for e in logs if e["event"] == "job_failed"]

                async def failing() -> bool:
                    counters = await get_json(client, "/v1/stats")
                    assert (counters["applied"], counters["unchanged"],
                            counters["replayed"]) == (1, 0, 0), counters
                    return len(failed()) >= 3

                await wait_until(failing, timeout=30,
                                 what="three failed attempts at the second job")
                assert all("full" in e["error"] for e in failed()), failed()
                # Nothing of it is there: not on disk, not in the store's own connection.
                assert stats_rows(mnt / STATS_FILE) == before
                match = await get_json(client, f"/v1/matches/{GUID}")
                assert [(p["name"], p["score"], p["goals"]) for p in match["players"]] == [
                    ("A", 100, 1)]
                players = (await get_json(client, "/v1/players"))["players"]
                assert [(p["name"], p["matches"], p["score"]) for p in players] == [
                    ("A", 1, 100)]
                assert (await get_json(client, "/v1/stats"))["applied"] == 1
                assert (await client.get("/readyz")).status == 200

                filler.unlink()
                await wait_until(lambda: applied(2), timeout=30, what="the second job applied")
            after = stats_rows(mnt / STATS_FILE)
            assert after["applied"] == [(1, 2)]
            match = await get_json(client, f"/v1/matches/{GUID}")
            assert sorted((p["name"], p["score"], p["goals"]) for p in match["players"]) == [
                ("A", 250, 2), ("B", 80, 0)]
            # Careers count the second line once: A's total is 250, not 100 + 250 or 500.
            players = (await get_json(client, "/v1/players"))["players"]
            assert sorted((p["name"], p["matches"], p["score"]) for p in players) == [
                ("A", 1, 250), ("B", 1, 80)]
            assert len(after["matches"]) == 1
            assert (await get_json(client, "/v1/dead"))["total"] == 0
        finally:
            await client.close()


# -- 5. `collector recover` on a sound file --------------------------------------------------


async def _sound_queue(data_dir: Path) -> None:
    """Pending jobs (one with two failed attempts), a dead letter, an Idempotency-Key and
    a processed job, cleanly closed."""
    queue = DurableQueue(data_dir)
    await queue.open()
    try:
        await queue.put([{"id": "k"}], key="the-key")  # seq 1
        await queue.put([{"id": f"j{n}"} for n in range(6)], source="src", sequence=10)
        queue.ack(await asyncio.wait_for(queue.next_job(), 10))  # seq 1 processed
        await queue.dead_letter(await asyncio.wait_for(queue.next_job(), 10), "boom")  # 2
        head = await asyncio.wait_for(queue.next_job(), 10)
        head.attempt = 2
        await queue.record_attempt(head)  # seq 3 failed twice
    finally:
        await queue.close()


def files_of(directory: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) of every file but the lock."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir()) if p.name != "collector.lock"}


def pending_of_a_copy(data_dir: Path) -> list[Any]:
    """read_pending on a copy: opening the original could change it."""
    with tempfile.TemporaryDirectory(prefix="recover-copy-") as tmp:
        for p in data_dir.iterdir():
            if p.name.startswith(QUEUE_FILE) and "damaged" not in p.name:
                shutil.copyfile(p, Path(tmp) / p.name)
        return read_pending(Path(tmp))


@pytest.mark.slow
def test_recover_of_a_sound_file_says_so_and_changes_nothing_force_keeps_every_job(
    data_dir: Path, tmp_path: Path
) -> None:
    asyncio.run(_sound_queue(data_dir))
    files = files_of(data_dir)
    assert list(files) == [QUEUE_FILE]
    original = (data_dir / QUEUE_FILE).read_bytes()
    state = read_queue_file(data_dir)
    jobs = pending_of_a_copy(data_dir)
    assert [(j.seq, j.attempt) for j in jobs] == [(3, 3), (4, 1), (5, 1), (6, 1), (7, 1)]

    result = run_cli("recover", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (f"queue file {data_dir / QUEUE_FILE} is sound: nothing to "
                             "recover (--force rebuilds it anyway)\n")
    assert files_of(data_dir) == files  # byte for byte, not even touched

    result = run_cli("recover", "--force", "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "salvaged 5 jobs in seq order, 1 dead letters and 1 Idempotency-Keys" \
        in result.stdout, result.stdout
    assert "every job was readable" in result.stdout
    assert "new jobs start at seq 8" in result.stdout
    aside = [p for p in data_dir.iterdir() if p.name.startswith(f"{QUEUE_FILE}.damaged-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == original  # kept as it was
    assert pending_of_a_copy(data_dir) == jobs  # seq, payload, attempts, source, sequence
    rebuilt = read_queue_file(data_dir)
    assert (rebuilt.rows, rebuilt.dead, rebuilt.processed_total, rebuilt.last_seq) == (
        state.rows, state.dead, state.processed_total, state.last_seq)
    assert not inspect_file(data_dir, full=True).problems
    check = run_cli("check", "--full", "--data-dir", str(data_dir), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
