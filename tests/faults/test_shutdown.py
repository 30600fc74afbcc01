"""SIGTERM: the running job finishes (or, past server.shutdown_timeout, comes back on the
next start), new connections are turned away, the process exits 0, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.crash import drain_and_stop, until
from tests.support.recorder import DELAY_ENV, FILE_ENV, Record, read_records
from tests.support.server import ServerProcess, wait_until

pytestmark = pytest.mark.slow

ServerFactory = Callable[..., ServerProcess]
HANG_GUARD_S = 90.0  # how long a wait may take before the test calls it a hang


async def post(url: str, body: Any) -> dict[str, Any]:
    """POST events; return the 202 answer."""
    async with aiohttp.ClientSession() as session, \
            session.post(f"{url}/v1/events", json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 202, answer
        return answer


async def probe(url: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]] | None:
    """One request on a new connection: (status, JSON) or None when the connection fails."""
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            method = "POST" if body is not None else "GET"
            async with session.request(method, f"{url}{path}", json=body) as resp:
                return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, ConnectionError):
        return None


async def sigterm_and_check_refusal(server: ServerProcess) -> None:
    """SIGTERM; once the server took the signal, new connections are turned away.

    Until the listener closes, /readyz answers 200 (the signal not handled yet) or 503
    "shutting down", nothing else; then a new request finds no listener at all, while the
    job in flight may still be running."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    answers: list[tuple[int, dict[str, Any]]] = []

    async def refused() -> bool:
        answer = await probe(server.url, "/readyz")
        if answer is not None:
            answers.append(answer)
        return answer is None

    await wait_until(refused, timeout=HANG_GUARD_S, what="the listener closes after SIGTERM")
    assert {(status, json.dumps(body)) for status, body in answers} <= {
        (200, json.dumps({"status": "ready"})),
        (503, json.dumps({"error": "not_ready", "detail": "shutting down"}))}, answers
    late = await probe(server.url, "/v1/events", {"id": "late", "Event": "X"})
    assert late is None, late


async def wait_exit(server: ServerProcess) -> int:
    """The exit code (no second signal is sent); HANG_GUARD_S only guards against a hang:
    how the shutdown went is told by the records and the log, not by the clock."""
    assert server.proc is not None
    return await asyncio.to_thread(server.proc.wait, HANG_GUARD_S)


def logged(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The server's JSON log lines of this event."""
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def by_kind(records: list[Record], pid: int, kind: str) -> list[int]:
    return [r.seq for r in records if r.pid == pid and r.kind == kind]


async def test_sigterm_lets_the_running_job_finish_and_the_rest_waits_for_the_next_start(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    record_file = tmp_path / "record.log"
    shutdown_timeout = 5.0
    env = {FILE_ENV: str(record_file), DELAY_ENV: "1.0",
           "COLLECTOR_SERVER_SHUTDOWN_TIMEOUT": str(shutdown_timeout)}
    first = server_process(args=["--handler", "tests.support.recorder:slow"], env=env)
    first.start()
    assert first.proc is not None
    answers = [await post(first.url, {"id": "e1"}),
               await post(first.url, [{"id": "e2"}, {"id": "e3"}, {"id": "e4"}])]
    pid = first.proc.pid
    await until(lambda: by_kind(read_records(record_file), pid, "start") != [],
                "the first job starts")

    await sigterm_and_check_refusal(first)
    code = await wait_exit(first)
    first_run = read_records(record_file)

    assert code == 0, first.output()[-3000:]
    started, ended = (by_kind(first_run, pid, k) for k in ("start", "end"))
    assert started[0] == 1
    assert started == ended, "a job was cut although it fit in the shutdown timeout"
    assert logged(first, "worker_stop_timeout") == [], "the grace ran out for a 1 s job"
    assert [e["processed"] for e in logged(first, "worker_stopped")] == [len(ended)]

    second = server_process(args=["--handler", "tests.support.recorder:slow"],
                            env={**env, DELAY_ENV: "0.01"})
    second.start()
    assert second.proc is not None
    stats = await drain_and_stop(second)
    records = read_records(record_file)

    assert [(a["first_seq"], a["last_seq"]) for a in answers] == [(1, 1), (2, 4)]
    again = by_kind(records, second.proc.pid, "start")
    assert again == by_kind(records, second.proc.pid, "end")
    assert started + again == [1, 2, 3, 4], "a job was lost or handled twice"
    assert [r.event_id for r in records if r.kind == "end"] == ["e1", "e2", "e3", "e4"]
    assert (stats["processed_total"], stats["last_seq"], stats["dead"]) == (4, 4, 0)


async def test_a_job_slower_than_the_shutdown_timeout_comes_back_on_the_next_start(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    record_file = tmp_path / "record.log"
    env = {FILE_ENV: str(record_file), DELAY_ENV: "30",
           "COLLECTOR_SERVER_SHUTDOWN_TIMEOUT": "1"}
    first = server_process(args=["--handler", "tests.support.recorder:slow"], env=env)
    first.start()
    assert first.proc is not None
    await post(first.url, [{"id": "e1"}, {"id": "e2"}])
    pid = first.proc.pid
    await until(lambda: by_kind(read_records(record_file), pid, "start") != [],
                "the first job starts")

    await sigterm_and_check_refusal(first)
    code = await wait_exit(first)
    first_run = read_records(record_file)

    # The 30 s job did not hold the exit: the grace of shutdown_timeout ran out, the
    # worker said so and cut the job, and the process exited 0 without handling it.
    assert code == 0, first.output()[-3000:]
    assert by_kind(first_run, pid, "start") == [1]
    assert by_kind(first_run, pid, "end") == []
    assert [(e["level"], e["grace_s"]) for e in logged(first, "worker_stop_timeout")] == [
        ("warning", 1.0)], first.output()[-3000:]
    assert [e["processed"] for e in logged(first, "worker_stopped")] == [0]

    second = server_process(args=["--handler", "tests.support.recorder:slow"],
                            env={**env, DELAY_ENV: "0.01"})
    second.start()
    assert second.proc is not None
    stats = await drain_and_stop(second)
    records = read_records(record_file)

    assert by_kind(records, second.proc.pid, "start") == [1, 2]
    assert by_kind(records, second.proc.pid, "end") == [1, 2]
    assert [r.event_id for r in records if r.kind == "end"] == ["e1", "e2"]
    assert (stats["processed_total"], stats["last_seq"], stats["dead"]) == (2, 2, 0)
