"""Failure branches of the bridge's spool, made to happen for real.

* A second bridge on the same spool dir (a real second process) is refused with one
  line naming the lock; the first one carries on.
* A spool file of garbage is refused with one line, no traceback, and kept byte for byte.
* A spool write that fails (the spool dir's file system is full) is reported, the batches
  wait in memory, and once space returns every message reaches the collector, once, in
  order.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from collector.bridge.relay import Bridge, BridgeConfig
from collector.bridge.spool import LOCK_FILE, SPOOL_FILE, Spool
from tests.support.bridge import RECORD_ENV, FakeGame, Session, read_records, unique_jobs
from tests.support.failures import fill, small_tmpfs
from tests.support.model import cli_env, one_line, run_cli
from tests.support.model import wait_until as wait_until_sync
from tests.support.paths import CAPTURE_JSONL, CAPTURE_STREAM
from tests.support.server import ServerProcess, free_port, wait_until

ServerFactory = Callable[..., ServerProcess]
MESSAGES = [orjson.loads(line) for line in CAPTURE_JSONL.read_bytes().splitlines()]


def bridge_args(spool_dir: Path) -> list[str]:
    """`collector bridge` on `spool_dir`, with a game and a collector nobody listens on."""
    return ["bridge", "--spool-dir", str(spool_dir), "--to", f"http://127.0.0.1:{free_port()}",
            "--game", f"127.0.0.1:{free_port()}", "--reconnect-interval", "0.1"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_second_bridge_on_the_same_spool_is_refused_with_one_line(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    log_path = tmp_path / "first.log"
    with log_path.open("wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "collector", *bridge_args(spool_dir)],
                                 stdout=log, stderr=subprocess.STDOUT,
                                 env=cli_env(PYTHONFAULTHANDLER="1"),
                                 cwd=tmp_path)
    try:
        def started() -> bool:
            assert first.poll() is None, log_path.read_text()
            return b'"bridge_started"' in log_path.read_bytes()

        wait_until_sync(started, "the first bridge holds the spool", timeout=30)
        spool_before = digest(spool_dir / SPOOL_FILE)

        try:
            second = run_cli(*bridge_args(spool_dir), cwd=tmp_path, timeout=30)
        except AssertionError as hang:  # with the first one's side of the story
            state = "running" if first.poll() is None else f"exited {first.returncode}"
            raise AssertionError(f"{hang}\nthe first bridge, {state}:\n"
                                 f"{log_path.read_text()}") from None

        assert second.returncode == 1
        line = one_line(second.stderr)
        assert line == (f"collector: error: spool dir {spool_dir} is in use by another "
                        f"bridge (lock {spool_dir / LOCK_FILE})")
        assert b"spool_opened" not in second.stdout.encode()
        assert first.poll() is None  # the first one carries on, its spool untouched
        assert digest(spool_dir / SPOOL_FILE) == spool_before
        first.send_signal(signal.SIGTERM)
        try:
            code = first.wait(30)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGABRT)
            first.wait(10)
            raise AssertionError("the first bridge ignored SIGTERM; its log, and its "
                                 f"threads at SIGABRT:\n{log_path.read_text()}") from None
        assert code == 0, log_path.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "garbage after a SQLite header"])
def test_a_spool_file_of_garbage_is_refused_with_one_line_and_kept(
    tmp_path: Path, damage: str
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    junk = random.Random(7).randbytes(64 << 10)
    if damage != "garbage":
        junk = b"SQLite format 3\0" + junk
    (spool_dir / SPOOL_FILE).write_bytes(junk)

    result = run_cli(*bridge_args(spool_dir), cwd=tmp_path, timeout=30)

    assert result.returncode == 1
    line = one_line(result.stderr)  # one line, no traceback
    assert line.startswith(f"collector: error: spool {spool_dir / SPOOL_FILE}: ")
    assert "not a database" in line or "malformed" in line, line
    assert (spool_dir / SPOOL_FILE).read_bytes() == junk  # kept as it was
    assert sorted(p.name for p in spool_dir.iterdir()) == sorted([SPOOL_FILE, LOCK_FILE])
    # `--show-dead` says the same, and the lock went with the process.
    shown = run_cli("bridge", "--show-dead", "--spool-dir", str(spool_dir), cwd=tmp_path,
                    timeout=30)
    assert shown.returncode == 1
    assert one_line(shown.stderr) == line
    assert shown.stdout == ""


@pytest.mark.slow
async def test_a_failed_spool_write_is_reported_and_nothing_is_lost_when_space_returns(
    tmp_path: Path, server_process: ServerFactory
) -> None:
    record_file = tmp_path / "record.jsonl"
    server = server_process(args=["--handler", "tests.support.bridge:record"],
                            env={RECORD_ENV: str(record_file)})
    with small_tmpfs(tmp_path / "mnt", size_mb=8) as mnt:
        await asyncio.to_thread(server.start)
        spool = Spool(mnt / "spool")
        await spool.open()
        filler = mnt / "filler"
        game = FakeGame([Session(CAPTURE_STREAM.read_bytes())])
        try:
            await game.start()
            fill(filler)
            cfg = BridgeConfig(url=server.url, spool_dir=mnt / "spool", game_port=game.port,
                               reconnect_interval=0.1, connect_timeout=2.0,
                               batch_max_delay=0.05, backoff_base=0.05, backoff_cap=0.3,
                               status_interval=60.0, request_timeout=10.0)
            stop = asyncio.Event()
            with capture_logs() as logs:
                async with aiohttp.ClientSession() as session:
                    bridge = Bridge(cfg, spool, session)
                    run = asyncio.create_task(bridge.run(stop))
                    try:
                        def failing() -> bool:
                            assert not run.done()
                            return (bridge.received == len(MESSAGES)
                                    and "SPOOL WRITE FAILING" in bridge.status_text()
                                    and any(e["event"] == "spool_write_failed" for e in logs))

                        await wait_until(failing, timeout=30,
                                         what="every message read and the spool failing")
                        reports = [e for e in logs if e["event"] == "spool_write_failed"]
                        assert reports[0]["attempt"] == 1
                        assert "full" in reports[0]["error"], reports
                        assert len(reports) == 1  # reported once, not once a second
                        assert spool.pending_events == 0  # nothing could be stored
                        assert read_records(record_file) == []  # nor sent

                        filler.unlink()

                        def all_arrived() -> bool:
                            # What arrives is always the recording's beginning: no gaps.
                            got = [job["sequence"] for job in
                                   unique_jobs(read_records(record_file))]
                            assert got == list(range(1, len(got) + 1)), got
                            return len(got) >= len(MESSAGES)

                        await wait_until(all_arrived, timeout=60,
                                         what="every message at the collector")
                        assert "SPOOL WRITE FAILING" not in bridge.status_text()
                    finally:
                        stop.set()
                        await asyncio.wait_for(run, 30)
        finally:
            await game.stop()
            await spool.close()
            server.kill()
    jobs = unique_jobs(read_records(record_file))
    assert [job["seq"] for job in jobs] == list(range(1, len(MESSAGES) + 1))
    assert len({job["source"] for job in jobs}) == 1
    assert [job["sequence"] for job in jobs] == list(range(1, len(MESSAGES) + 1))
    assert [job["payload"] for job in jobs] == MESSAGES

