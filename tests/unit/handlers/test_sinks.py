"""archive and forward: real files in tmp_path, a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collector.config import describe, load_settings
from collector.errors import ConfigError, PermanentError
from collector.handlers.archive import Archive, day_of
from collector.handlers.forward import Forwarder, ForwardError
from collector.jobs import Job
from tests.support.paths import CAPTURE_JSONL, REPO
from tests.support.server import ClientFactory, free_port

DAY = 86_400.0
WAIT_S = 30.0  # a ceiling for "the worker has caught up", never a measured time


def job(seq: int, *, received_at: float | None = None, **fields: Any) -> Job:
    return Job(seq=seq, payload={"Event": "Test", "Data": {"n": seq}},
               received_at=time.time() if received_at is None else received_at, **fields)


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [orjson.loads(line) for line in raw.splitlines()]


def archived_seqs(directory: Path) -> list[int]:
    return [line["seq"] for path in sorted(directory.iterdir()) for line in read_lines(path)]


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    a = Archive(tmp_path / "archive")
    await a.open()
    yield a
    await a.close()


async def test_each_event_is_one_line_with_its_seq(archive: Archive) -> None:
    now = time.time()
    for seq in range(1, 6):
        await archive.write(job(seq, received_at=now, source="bridge", sequence=100 + seq))
    (path,) = archive.directory.iterdir()
    assert path.name == f"{day_of(now)}.jsonl"
    lines = read_lines(path)
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[0] == {"seq": 1, "received_at": now, "source": "bridge", "sequence": 101,
                        "payload": {"Event": "Test", "Data": {"n": 1}}}


async def test_running_the_same_jobs_again_writes_no_line_twice(tmp_path: Path) -> None:
    jobs = [job(seq) for seq in range(1, 11)]
    first = Archive(tmp_path / "archive")
    await first.open()
    for j in jobs[:7]:
        await first.write(j)
    await first.write(jobs[3])  # a retry within the same run
    await first.close()
    # After a crash the queue hands out the jobs that were not acknowledged yet.
    second = Archive(tmp_path / "archive")
    await second.open()
    assert second.last_seq == 7
    for j in jobs[4:]:
        await second.write(j)
    await second.close()
    assert archived_seqs(tmp_path / "archive") == list(range(1, 11))


async def test_a_torn_last_line_is_cut_and_its_job_written_again(tmp_path: Path) -> None:
    directory = tmp_path / "archive"
    first = Archive(directory)
    await first.open()
    for seq in (1, 2):
        await first.write(job(seq))
    await first.close()
    (path,) = directory.iterdir()
    with path.open("ab") as fh:
        fh.write(b'{"seq": 3, "received_at": 1.0, "payl')  # the crash hit mid-write
    again = Archive(directory)
    await again.open()
    assert again.last_seq == 2
    await again.write(job(3))
    await again.close()
    assert archived_seqs(directory) == [1, 2, 3]


async def test_a_dead_letter_put_back_in_place_is_written_once(tmp_path: Path) -> None:
    """Seq 3 was dead-lettered before the archive got it, then retried in its old place."""
    directory = tmp_path / "archive"
    first = Archive(directory)
    await first.open()
    for seq in (1, 2, 4, 5):
        await first.write(job(seq))
    await first.write(job(3))  # the retried dead letter
    await first.write(job(4))  # and a job that is already there
    await first.close()
    again = Archive(directory)  # after a crash: the mark is still 5, not the revived 3
    await again.open()
    assert again.last_seq == 5
    for seq in (3, 5, 6):  # the replays after the crash, then a new job
        await again.write(job(seq))
    await again.close()
    lines = [line for path in sorted(directory.iterdir()) for line in read_lines(path)]
    assert [line["seq"] for line in lines] == [1, 2, 4, 5, 3, 6]
    assert [line.get("revived", False) for line in lines] == [False] * 4 + [True, False]


async def test_files_never_go_back_in_time(archive: Archive) -> None:
    now = time.time()
    await archive.write(job(1, received_at=now))
    await archive.write(job(2, received_at=now - 3 * DAY))  # an older request, a later seq
    assert [p.name for p in archive.directory.iterdir()] == [f"{day_of(now)}.jsonl"]
    assert archived_seqs(archive.directory) == [1, 2]


async def test_old_days_are_compressed_and_the_newest_never(tmp_path: Path) -> None:
    now = time.time()
    directory = tmp_path / "archive"
    a = Archive(directory, compress_after_days=1)
    await a.open()
    await a.write(job(1, received_at=now - 5 * DAY))
    await a.write(job(2, received_at=now - 5 * DAY))
    await a.write(job(3, received_at=now - 3 * DAY))
    assert sorted(p.name for p in await a.compressed()) == [f"{day_of(now - 5 * DAY)}.jsonl.gz"]
    await a.write(job(4, received_at=now))
    assert [p.name for p in await a.compressed()] == [f"{day_of(now - 3 * DAY)}.jsonl.gz"]
    await a.close()
    names = sorted(p.name for p in directory.iterdir())
    assert names == [f"{day_of(now - 5 * DAY)}.jsonl.gz", f"{day_of(now - 3 * DAY)}.jsonl.gz",
                     f"{day_of(now)}.jsonl"]
    assert archived_seqs(directory) == [1, 2, 3, 4]


async def test_opening_compresses_old_files_and_finishes_an_interrupted_compression(
        tmp_path: Path) -> None:
    directory = tmp_path / "archive"
    directory.mkdir()
    old, older, newest = (day_of(time.time() - n * DAY) for n in (4, 6, 2))
    line = b'{"seq":1,"received_at":0.0,"source":null,"sequence":null,"payload":{}}\n'
    (directory / f"{older}.jsonl").write_bytes(line)
    # A crash after the .gz was renamed in place and before the .jsonl was removed.
    (directory / f"{old}.jsonl").write_bytes(line.replace(b"1", b"2", 1))
    (directory / f"{old}.jsonl.gz").write_bytes(gzip.compress(line.replace(b"1", b"2", 1)))
    (directory / f"{old}.jsonl.gz.tmp").write_bytes(b"half a file")
    (directory / f"{newest}.jsonl").write_bytes(line.replace(b"1", b"3", 1))
    a = Archive(directory, compress_after_days=1)
    await a.open()
    assert a.last_seq == 3
    await a.compressed()
    await a.close()
    assert sorted(p.name for p in directory.iterdir()) == \
        [f"{older}.jsonl.gz", f"{old}.jsonl.gz", f"{newest}.jsonl"]
    assert archived_seqs(directory) == [1, 2, 3]




async def drained(client: Any, last_seq: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        q: dict[str, Any] = await (await client.get("/v1/queue")).json()
        if q["last_seq"] >= last_seq and q["pending"] == 0 and q["in_flight"] == 0:
            return q
        assert time.monotonic() < deadline, q
        await asyncio.sleep(0.02)


async def test_several_handlers_run_in_order_each_once_per_job(make_client: ClientFactory,
                                                               data_dir: Path) -> None:
    client = await make_client(
        worker__handlers=("stats", "archive", "tests.support.handlers:fail_first_attempt"),
        worker__backoff_base=0.001, worker__backoff_cap=0.002)
    body = CAPTURE_JSONL.read_bytes()
    resp = await client.post("/v1/events", data=body,
                             headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 202
    q = await drained(client, 438)
    assert q["dead"] == 0
    # Every job failed once in the last handler: the archive still holds each line once.
    assert archived_seqs(data_dir / "archive") == list(range(1, 439))
    match = (await (await client.get("/v1/matches")).json())["matches"][0]
    assert match["teams"][1]["score"] == 1


# -- forward ---------------------------------------------------------------------------------


class Receiver:
    """A loopback HTTP server that records what it gets and answers scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.statuses: list[int] = []  # answered first, one per request; then 202

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), json.loads(await request.read())))
        status = self.statuses.pop(0) if self.statuses else 202
        return web.json_response({"status": status}, status=status)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> tuple[Receiver, str]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/ingest", rec.handle)
    server: TestServer = await aiohttp_server(app)
    return rec, str(server.make_url("/ingest"))


async def test_forward_posts_in_order_with_idempotency_keys(
        receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    forwarder = Forwarder(url, key_prefix="home-", token="t0k")
    await forwarder.open()
    try:
        for seq in range(1, 6):
            await forwarder.send(job(seq, source="bridge", sequence=40 + seq))
        await forwarder.send(job(6))
    finally:
        await forwarder.close()
    assert [body["Data"]["n"] for _, body in rec.requests] == [1, 2, 3, 4, 5, 6]
    assert [h["Idempotency-Key"] for h, _ in rec.requests] == [f"home-{n}" for n in range(1, 7)]
    first, _ = rec.requests[0]
    assert (first["X-Source"], first["X-Sequence"]) == ("bridge", "41")
    assert first["Authorization"] == "Bearer t0k"
    assert "X-Sequence" not in rec.requests[5][0]


@pytest.mark.parametrize(("status", "error"), [
    (500, ForwardError), (503, ForwardError), (408, ForwardError), (429, ForwardError),
    (302, ForwardError), (400, PermanentError), (404, PermanentError), (413, PermanentError),
])
async def test_forward_failures_raise_retryable_or_permanent(
        receiver: tuple[Receiver, str], status: int, error: type[Exception]) -> None:
    rec, url = receiver
    rec.statuses = [status]
    forwarder = Forwarder(url)
    await forwarder.open()
    try:
        with pytest.raises(error, match=str(status)) as caught:
            await forwarder.send(job(1))
        if error is ForwardError:
            assert not isinstance(caught.value, PermanentError)
        await forwarder.send(job(1))  # the retry goes through, with the same key
    finally:
        await forwarder.close()
    assert [h["Idempotency-Key"] for h, _ in rec.requests] == ["collector-1", "collector-1"]


async def test_forward_to_nobody_is_a_retryable_error() -> None:
    forwarder = Forwarder(f"http://127.0.0.1:{free_port()}/ingest", timeout=5.0)
    await forwarder.open()
    try:
        with pytest.raises(ForwardError, match="POST"):
            await forwarder.send(job(1))
    finally:
        await forwarder.close()


async def test_forward_through_the_worker_retries_5xx_and_dead_letters_4xx(
        make_client: ClientFactory, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.statuses = [503, 202, 400]  # event 1 fails once; event 2 is refused for good
    client = await make_client(worker__handlers=("forward",), forward__url=url,
                               worker__backoff_base=0.001, worker__backoff_cap=0.002)
    events = b"".join(orjson.dumps({"event": "e", "n": n}) + b"\n" for n in (1, 2, 3))
    resp = await client.post("/v1/events", data=events,
                             headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 202
    q = await drained(client, 3)
    assert q["dead"] == 1
    got = [(h["Idempotency-Key"], body["n"]) for h, body in rec.requests]
    assert got == [("collector-1", 1), ("collector-1", 1), ("collector-2", 2),
                   ("collector-3", 3)]


# -- configuration ---------------------------------------------------------------------------


def test_the_documented_config_block_loads_with_the_new_sections(tmp_path: Path) -> None:
    readme = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "collector.toml"
    config.write_text(block, encoding="utf-8")
    settings = load_settings(config, environ={})
    assert settings.worker.handlers == ("stats",)
    assert settings.archive.compress_after_days == 1
    assert settings.forward.url == "https://example.org/v1/events"
    assert describe(settings)["forward"]["token"] == "***"  # never logged


def test_forward_settings_from_the_environment_and_their_checks() -> None:
    env = {"COLLECTOR_FORWARD_URL": "http://127.0.0.1:9/x", "COLLECTOR_FORWARD_TIMEOUT": "2.5",
           "COLLECTOR_ARCHIVE_COMPRESS_AFTER_DAYS": "7", "COLLECTOR_WORKER_HANDLERS": "forward"}
    settings = load_settings(environ=env)
    assert (settings.forward.url, settings.forward.timeout) == ("http://127.0.0.1:9/x", 2.5)
    assert settings.archive.compress_after_days == 7
    with pytest.raises(ConfigError, match=r"forward\.url: required"):
        load_settings(environ={"COLLECTOR_WORKER_HANDLERS": "stats,forward"})
    with pytest.raises(ConfigError, match=r"forward\.url: must start with"):
        load_settings(environ={"COLLECTOR_FORWARD_URL": "ftp://x"})
    with pytest.raises(ConfigError, match=r"archive\.compress_after_days"):
        load_settings(environ={"COLLECTOR_ARCHIVE_COMPRESS_AFTER_DAYS": "-1"})
