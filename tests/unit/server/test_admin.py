"""Admin: dead letters, peek and export over HTTP; the `status`, `dead`, `queue`, `export`
and `import` commands against a real daemon and against a stopped daemon's data dir."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient

from collector.cli import main
from tests.support.api import RECORDER
from tests.support.handlers import PICKY
from tests.support.paths import REPO
from tests.support.server import ClientFactory, ServerProcess, wait_until

pytestmark = pytest.mark.both_backends

TOKEN = "admin-test-token-7c1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}










@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    """Reset the handlers' records; open tests.support.api:block's gate at the end."""
    PICKY.refuse = True
    PICKY.seen = []
    RECORDER.reset()
    yield
    RECORDER.gate.set()


WAIT_S = 30.0  # a hang guard for the polls, not a speed requirement


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """wait_until with this module's hang guard, naming the check it waited for."""
    await wait_until(check, timeout=WAIT_S, what=check.__name__)


async def call(client: TestClient[Any, Any], method: str, path: str, *,
               body: Any = None, auth: bool = True) -> tuple[int, Any]:
    """(status, JSON) of one request."""
    resp = await client.request(method, path, headers=AUTH if auth else {},
                                data=None if body is None else orjson.dumps(body))
    return resp.status, await resp.json()


async def with_dead_letters(client: TestClient[Any, Any]) -> None:
    """Post n=1..5 with 2 and 4 "bad"; wait until 3 are done and 2 dead."""
    events = [{"n": n, "bad": n in (2, 4)} for n in range(1, 6)]
    resp = await client.post("/v1/events", data=orjson.dumps(events), headers={**AUTH, **JSON})
    assert resp.status == 202

    async def settled() -> bool:
        _, queue = await call(client, "GET", "/v1/queue")
        return bool(queue["dead"] == 2 and queue["processed_total"] == 3)

    await eventually(settled)


# -- the HTTP side --------------------------------------------------------------------------


async def test_dead_letters_list_show_and_404(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN,
                               worker__handlers=("tests.support.handlers:picky",))
    await with_dead_letters(client)
    status, page = await call(client, "GET", "/v1/dead")
    assert status == 200
    assert [d["seq"] for d in page["dead"]] == [2, 4]
    assert page["total"] == 2
    assert page["dead"][0]["payload"] == {"n": 2, "bad": True}
    assert page["dead"][0]["error"] == "PermanentError: refused 2"
    status, one = await call(client, "GET", "/v1/dead/4")
    assert (status, one["seq"], one["attempts"]) == (200, 4, 1)
    status, missing = await call(client, "GET", "/v1/dead/3")
    assert (status, missing["error"]) == (404, "not_found")
    status, page = await call(client, "GET", "/v1/dead?limit=1&offset=1")
    assert [d["seq"] for d in page["dead"]] == [4]
    status, bad = await call(client, "GET", "/v1/dead?limit=0")
    assert (status, bad["error"]) == (400, "invalid_parameter")
    status, denied = await call(client, "GET", "/v1/dead", auth=False)
    assert (status, denied["error"]) == (401, "unauthorized")


async def test_retry_in_place_runs_them_next_in_seq_order(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN,
                               worker__handlers=("tests.support.handlers:picky",))
    await with_dead_letters(client)
    PICKY.refuse = False
    PICKY.seen.clear()
    status, answer = await call(client, "POST", "/v1/dead/retry", body={"seqs": [4, 2]})
    assert status == 200
    assert answer == {"retried": 2, "seqs": [2, 4], "at": "place"}

    async def done() -> bool:
        return len(PICKY.seen) == 2

    await eventually(done)
    assert PICKY.seen == [(2, 2), (4, 4)]  # their old seqs, in seq order
    _, queue = await call(client, "GET", "/v1/queue")
    assert queue["dead"] == 0
    assert queue["last_seq"] == 5


async def test_retry_one_at_the_tail_and_drop(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN,
                               worker__handlers=("tests.support.handlers:picky",))
    await with_dead_letters(client)
    status, bad = await call(client, "POST", "/v1/dead/2/retry?at=middle")
    assert (status, bad["error"]) == (400, "invalid_parameter")
    PICKY.refuse = False
    PICKY.seen.clear()
    status, answer = await call(client, "POST", "/v1/dead/4/retry?at=tail")
    assert status == 200
    assert answer == {"retried": 1, "seqs": [6], "at": "tail"}

    async def done() -> bool:
        return PICKY.seen == [(6, 4)]

    await eventually(done)
    status, dropped = await call(client, "DELETE", "/v1/dead/2")
    assert (status, dropped) == (200, {"dropped": 1})
    status, again = await call(client, "DELETE", "/v1/dead/2")
    assert (status, again["error"]) == (404, "not_found")
    status, missing = await call(client, "POST", "/v1/dead/2/retry")
    assert (status, missing["error"]) == (404, "not_found")
    status, none = await call(client, "POST", "/v1/dead/drop", body={"all": True})
    assert (status, none) == (200, {"dropped": 0})
    status, wrong = await call(client, "POST", "/v1/dead/drop", body={"seqs": ["x"]})
    assert (status, wrong["error"]) == (400, "invalid_json")


async def test_peek_and_export_while_the_worker_holds_the_head(
    make_client: ClientFactory,
) -> None:
    client = await make_client(server__token=TOKEN, worker__handlers=("tests.support.api:block",))
    events = [{"n": n} for n in range(1, 5)]
    resp = await client.post("/v1/events", data=orjson.dumps(events),
                             headers={**AUTH, **JSON, "X-Source": "pc", "X-Sequence": "40"})
    assert resp.status == 202

    async def held() -> bool:
        return len(RECORDER.jobs) == 1

    await eventually(held)
    status, peek = await call(client, "GET", "/v1/queue/peek?limit=3")
    assert status == 200
    assert [j["seq"] for j in peek["jobs"]] == [1, 2, 3]  # the one in flight first
    assert peek["jobs"][1] | {"received_at": 0} == {
        "seq": 2, "payload": {"n": 2}, "received_at": 0, "attempt": 1, "source": "pc",
        "sequence": 41}
    resp = await client.get("/v1/pending", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers["X-Pending-Count"] == "4"
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [(j["seq"], j["payload"]["n"], j["sequence"]) for j in lines] == [
        (1, 1, 40), (2, 2, 41), (3, 3, 42), (4, 4, 43)]
    assert (await client.get("/v1/pending")).status == 401
    RECORDER.gate.set()


# -- the commands against a real daemon ------------------------------------------------------


def cli(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m collector ARGS` to completion, in a clean environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COLLECTOR_")
           and k not in {"STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=cwd, env=env,
                          input=None if stdin is None else stdin.decode(), capture_output=True,
                          text=True, timeout=60, check=False)


def post(server: ServerProcess, events: list[dict[str, Any]], **headers: str) -> None:
    """POST events to a real server."""
    req = urllib.request.Request(f"{server.url}/v1/events", data=orjson.dumps(events),
                                 method="POST", headers={**AUTH, **JSON, **headers})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def queue_numbers(server: ServerProcess) -> dict[str, Any]:
    """GET /v1/queue of a real server."""
    req = urllib.request.Request(f"{server.url}/v1/queue", headers=AUTH)
    with urllib.request.urlopen(req, timeout=10) as resp:
        numbers: dict[str, Any] = json.loads(resp.read())
        return numbers


def wait_for(server: ServerProcess, check: Callable[[dict[str, Any]], bool], what: str
             ) -> None:
    """Poll /v1/queue until `check` holds; after WAIT_S, fail saying what was awaited and
    the last numbers seen."""
    deadline = time.monotonic() + WAIT_S
    while not check(numbers := queue_numbers(server)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}; /v1/queue says {numbers}")
        time.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Ran:
    """What an in-process command returned and printed."""

    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], restore_logging: None) -> Callable[..., Ran]:
    """Run `collector ARGS` in this process (the daemon, if any, is a real subprocess)."""

    def runner(*args: str) -> Ran:
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return runner


@pytest.mark.slow
def test_commands_over_http(server_process: Callable[..., ServerProcess], tmp_path: Path,
                            run: Callable[..., Ran]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = server_process(args=["--handler", "tests.support.handlers:refuse_bad"],
                            env={"COLLECTOR_SERVER_TOKEN": TOKEN})
    server.start()
    post(server, [{"n": n, "bad": n in (2, 4)} for n in range(1, 6)], **{"X-Source": "pc"})
    wait_for(server, lambda q: q["dead"] == 2 and q["processed_total"] == 3,
             "2 dead letters and 3 jobs processed")
    where = ("--url", server.url, "--token-file", str(token_file))

    status = cli("status", *where, cwd=tmp_path)  # once through the real entry point
    assert status.returncode == 0, status.stderr
    assert "ready" in status.stdout
    assert "dead letters    2" in status.stdout
    denied = run("status", "--url", server.url)
    assert denied.code == 1
    assert "401 unauthorized" in denied.err

    listing = run("dead", "list", *where)
    assert listing.code == 0, listing.err
    rows = listing.out.splitlines()
    assert [row.split()[0] for row in rows[1:3]] == ["2", "4"]
    assert "PermanentError: refused 2" in rows[1]
    shown = run("dead", "show", "4", *where)
    assert json.loads(shown.out)["payload"] == {"n": 4, "bad": True}
    assert run("dead", "show", "3", *where).code == 1

    retried = run("dead", "retry", "4", "--tail", *where)  # fails again: dead again
    assert retried.code == 0, retried.err
    assert retried.out.strip() == "retried 1 at the tail: seqs 6"
    wait_for(server, lambda q: q["dead"] == 2 and q["last_seq"] == 6,
             "seq 4 retried at the tail as seq 6 and dead again")
    dropped = run("dead", "drop", "--all", *where, "--json")
    assert json.loads(dropped.out) == {"dropped": 2}
    usage = run("dead", "drop", *where)
    assert usage.code == 1
    assert "--all" in usage.err

    peek = run("queue", "peek", *where, "--json")
    assert json.loads(peek.out) == []
    assert server.terminate() == 0
    gone = run("status", "--url", server.url)
    assert (gone.code, gone.out) == (1, "")  # EXIT_FAILED: an explicit --url is not guessed
    assert gone.err == (
        f"collector: error: GET {server.url}/v1/queue: cannot connect to {server.url} "
        "(connection refused)\n")


@pytest.mark.slow
def test_export_then_import_keeps_order_and_is_idempotent(
    server_process: Callable[..., ServerProcess], tmp_path: Path, run: Callable[..., Ran],
) -> None:
    # The source daemon holds its first job, so the rest stays pending for the export.
    source = server_process(args=["--handler", "tests.support.api:block"])
    source.start()
    post(source, [{"n": n} for n in range(1, 4)], **{"X-Source": "pc", "X-Sequence": "7"})
    post(source, [{"n": n} for n in range(4, 6)])
    wait_for(source, lambda q: q["in_flight"] == 1, "the worker holding job 1")
    export = tmp_path / "pending.jsonl"
    done = run("export", "--url", source.url, "-o", str(export), "--progress")
    assert done.code == 0, done.err
    assert "export [" in done.err  # the bar, asked for
    assert "exported 5 pending jobs (last seq 5)" in done.err
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(j["seq"], j["payload"]["n"], j["source"], j["sequence"]) for j in lines] == [
        (1, 1, "pc", 7), (2, 2, "pc", 8), (3, 3, "pc", 9), (4, 4, None, None),
        (5, 5, None, None)]
    again = run("export", "--url", source.url, "-o", str(export))
    assert again.code == 1
    assert "exists" in again.err
    source.kill()

    target = ServerProcess(tmp_path / "target", args=["--handler", "tests.support.api:block"])
    try:
        target.start()
        post(target, [{"n": 0}])  # something there already: imports go to the tail
        imported = run("import", "--url", target.url, str(export))
        assert imported.code == 0, imported.err
        assert "imported 5 jobs" in imported.err
        repeat = run("import", "--url", target.url, str(export))
        assert "imported 0 jobs; 5 were imported before" in repeat.err
        moved = run("export", "--url", target.url)
        jobs = [json.loads(line) for line in moved.out.splitlines()]
        assert [(j["seq"], j["payload"]["n"], j["source"], j["sequence"]) for j in jobs] == [
            (1, 0, None, None), (2, 1, "pc", 7), (3, 2, "pc", 8), (4, 3, "pc", 9),
            (5, 4, None, None), (6, 5, None, None)]
    finally:
        target.kill()


def test_import_refuses_a_file_out_of_seq_order(tmp_path: Path, run: Callable[..., Ran]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seq": 5, "payload": {"n": 1}}\n{"seq": 3, "payload": {"n": 2}}\n')
    (tmp_path / "data").mkdir()
    ran = run("import", "--data-dir", str(tmp_path / "data"), str(bad))
    assert ran.code == 1
    assert "bad.jsonl:2: seq 3 after 5: not in seq order" in ran.err


# -- the commands on a stopped daemon's data dir ----------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what an in-process command's configure_logging() set up."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
def test_commands_on_a_stopped_daemons_data_dir(
    server_process: Callable[..., ServerProcess], data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_process(args=["--handler", "tests.support.handlers:refuse_bad"])
    server.start()
    post(server, [{"n": n, "bad": n in (2, 4)} for n in range(1, 6)])
    wait_for(server, lambda q: q["dead"] == 2 and q["processed_total"] == 3,
             "2 dead letters and 3 jobs processed")
    offline = ("--data-dir", str(data_dir))

    refused = cli("dead", "list", *offline, cwd=tmp_path)  # the daemon holds the lock
    assert refused.returncode == 1
    assert "in use by another collector" in refused.stderr
    assert "--url" in refused.stderr
    running = cli("status", *offline, cwd=tmp_path)  # the healthy case: it asks the daemon
    assert running.returncode == 0
    assert running.stdout.splitlines()[:2] == [f"from            {server.url}",
                                               "state           ready"]
    assert server.terminate() == 0

    assert main(["status", *offline, "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert (report["running"], report["dead"], report["pending"]) == (False, 2, 0)
    assert report["clean_shutdown"] is True
    assert report["processed_total"] == 3

    assert main(["dead", "list", *offline, "--json"]) == 0
    assert [d["seq"] for d in json.loads(capsys.readouterr().out)["dead"]] == [2, 4]
    assert main(["dead", "retry", "--all", *offline]) == 0
    assert capsys.readouterr().out.strip() == "retried 2 in their old place: seqs 2,4"
    assert main(["queue", "peek", *offline, "--json"]) == 0
    assert [j["seq"] for j in json.loads(capsys.readouterr().out)] == [2, 4]

    export = tmp_path / "moved.jsonl"
    assert main(["export", *offline, "-o", str(export), "--no-progress"]) == 0
    assert "exported 2 pending jobs (last seq 4)" in capsys.readouterr().err
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    other = tmp_path / "other"
    other.mkdir()
    assert main(["import", "--data-dir", str(other), str(export), "--no-progress"]) == 0
    assert "imported 2 jobs" in capsys.readouterr().err
    assert main(["export", "--data-dir", str(other), "--no-progress"]) == 0
    moved = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [j["payload"] for j in moved] == [{"n": 2, "bad": True}, {"n": 4, "bad": True}]
    assert [j["seq"] for j in moved] == [1, 2]
    # Straight into the queue file, the original receive times are kept.
    assert [j["received_at"] for j in moved] == [j["received_at"] for j in exported]
