"""The bridge against a fake game on loopback and a real `collector serve` subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from collector.bridge.batcher import Batcher
from collector.bridge.poster import events_url
from collector.bridge.relay import BridgeConfig, BridgeSummary, parse_host_port
from collector.bridge.spool import Batch, DeadLetter, Spool
from collector.errors import StartupError
from tests.support.bridge import (
    RECORD_ENV,
    FakeGame,
    Gate,
    Session,
    read_records,
    unique_jobs,
)
from tests.support.paths import CAPTURE_JSONL, CAPTURE_STREAM
from tests.support.server import ServerProcess, free_port, wait_until

STREAM = CAPTURE_STREAM.read_bytes()
LINES = CAPTURE_JSONL.read_bytes().splitlines()
MESSAGES = [orjson.loads(line) for line in LINES]
MATCH_GUID = "1F7ED23011F1435166EBAB919DB5566D"
RECORDER = ["--handler", "tests.support.bridge:record"]

ServerFactory = Callable[..., ServerProcess]


def offset_of(index: int) -> int:
    """Byte offset in the stream where message `index` starts."""
    return sum(len(line) for line in LINES[:index])


def config(spool_dir: Path, game: FakeGame | int, url: str, **overrides: Any) -> BridgeConfig:
    """A bridge config with test-sized delays."""
    values: dict[str, Any] = {
        "reconnect_interval": 0.1, "connect_timeout": 2.0, "batch_max_delay": 0.05,
        "backoff_base": 0.05, "backoff_cap": 0.3, "status_interval": 60.0,
        "request_timeout": 10.0,
    }
    values.update(overrides)
    port = game.port if isinstance(game, FakeGame) else game
    return BridgeConfig(url=url, spool_dir=spool_dir, game_port=port, **values)


class RunningBridge:
    """`run_bridge` as a task of the test's loop, stopped like Ctrl-C would.

    As a context manager it stops the bridge on the way out unless the test did.
    """

    def __init__(self, cfg: BridgeConfig) -> None:
        from collector.bridge.relay import run_bridge

        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(run_bridge(cfg, stop=self.stop_event))

    async def stop(self) -> BridgeSummary:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 30)

    async def __aenter__(self) -> RunningBridge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.task.done():
            await self.stop()


async def queue_stats(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with session.get(f"{server.url}/v1/queue") as resp:
        assert resp.status == 200
        stats: dict[str, Any] = await resp.json()
        return stats


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "record.jsonl"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def recorder_server(server_process: ServerFactory, record_file: Path,
                    *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    return server_process(args=[*extra, *RECORDER],
                          env={RECORD_ENV: str(record_file), **(env or {})})


# -- the whole path, with the collector killed mid-stream -----------------------------------


async def _relay_across_a_collector_kill(
    server: ServerProcess, record_file: Path, spool_dir: Path, http: aiohttp.ClientSession
) -> tuple[BridgeSummary, list[dict[str, Any]]]:
    """The game streams the recording; the collector is SIGKILLed and restarted meanwhile."""
    await asyncio.to_thread(server.start)
    before, during = Gate(offset_of(150)), Gate(offset_of(300))
    session = Session(STREAM, gates=[before, during])
    async with (FakeGame([session], chunk_pause=0.002) as game,
                RunningBridge(config(spool_dir, game, server.url)) as bridge):
        await wait_until(before.reached.is_set, timeout=20, what="150 messages sent")

        async def stored(n: int) -> bool:
            return int((await queue_stats(http, server))["last_seq"]) >= n

        await wait_until(lambda: stored(150), timeout=20, what="150 messages stored")
        before.resume.set()
        await wait_until(lambda: stored(151), timeout=20, what="traffic after the pause")
        await asyncio.to_thread(server.kill)  # mid-stream: the game is sending
        # Messages 300 on are sent while the collector is down: they must wait in the spool.
        await wait_until(during.reached.is_set, timeout=20, what="300 messages sent")
        during.resume.set()
        await wait_until(session.done.is_set, timeout=20, what="the game to send it all")
        await asyncio.to_thread(server.start)  # same data dir, same port
        await wait_until(lambda: stored(438), timeout=30, what="438 messages stored")

        async def drained() -> bool:
            stats = await queue_stats(http, server)
            return bool(stats["pending"] == 0 and stats["in_flight"] == 0)

        await wait_until(drained, timeout=30, what="the collector to process everything")
        summary = await bridge.stop()
        stats = await queue_stats(http, server)
    # The server stored each message once: nothing the bridge retried was stored twice.
    assert stats["last_seq"] == 438, stats
    assert stats["dead"] == 0, stats
    return summary, read_records(record_file)


@pytest.mark.slow
async def test_every_message_arrives_once_in_order_across_a_collector_kill(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
    http: aiohttp.ClientSession,
) -> None:
    server = recorder_server(server_process, record_file)
    summary, records = await _relay_across_a_collector_kill(server, record_file, spool_dir,
                                                            http)
    jobs = unique_jobs(records)
    assert [job["seq"] for job in jobs] == list(range(1, 439))
    assert len({job["source"] for job in jobs}) == 1
    assert jobs[0]["source"].startswith("bridge-")
    assert [job["sequence"] for job in jobs] == list(range(1, 439))
    assert [job["payload"] for job in jobs] == MESSAGES
    assert summary.received == 438
    assert summary.sent == 438
    assert summary.spooled == 0
    assert summary.set_aside == 0
    assert summary.dropped_bytes == 0
    assert summary.failed_attempts >= 1  # the collector was down while the game sent


@pytest.mark.slow
async def test_the_stats_store_ends_with_the_recordings_final_score(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
    http: aiohttp.ClientSession,
) -> None:
    server = recorder_server(server_process, record_file, "--handler", "stats")
    await _relay_across_a_collector_kill(server, record_file, spool_dir, http)
    async with http.get(f"{server.url}/v1/matches/{MATCH_GUID}") as resp:
        assert resp.status == 200, await resp.text()
        match = await resp.json()
    teams = {team["name"]: team for team in match["teams"]}
    assert teams["Blue"]["num"] == 0
    assert teams["Blue"]["score"] == 0
    assert teams["Orange"]["num"] == 1
    assert teams["Orange"]["score"] == 1


# -- spool --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_spool_survives_a_killed_bridge_and_is_sent_first_in_order(
    server_process: ServerFactory, record_file: Path, spool_dir: Path, tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    server = recorder_server(server_process, record_file)  # not started yet
    first = Session(STREAM)
    game = await FakeGame([first]).start()
    log_path = tmp_path / "bridge.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "bridge", "--game", f"127.0.0.1:{game.port}",
             "--to", server.url, "--spool-dir", str(spool_dir), "--reconnect-interval", "0.1",
             "--max-backoff", "0.3", "--batch-max-delay", "0.05"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        def disconnected() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return any(orjson.loads(line).get("event") == "game_disconnected"
                       for line in log_path.read_bytes().splitlines() if line.startswith(b"{"))

        # game_disconnected is logged once everything read from that connection is on disk.
        await wait_until(disconnected, timeout=30, what="the bridge to spool the game's stream")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await game.stop()
    lines = log_path.read_bytes().splitlines()
    gone = next(orjson.loads(line) for line in lines
                if b'"game_disconnected"' in line)
    assert gone["received"] == 438
    assert gone["spooled"] == 438  # the collector was never reachable

    # The collector is back; the restarted bridge meets a game playing something new.
    await asyncio.to_thread(server.start)
    second = Session(b"".join(LINES[:50]))
    async with (FakeGame([second]) as game,
                RunningBridge(config(spool_dir, game, server.url)) as bridge):
        await wait_until(lambda: len(unique_jobs(read_records(record_file))) >= 488,
                         timeout=30, what="488 messages handled")
        summary = await bridge.stop()
    jobs = unique_jobs(read_records(record_file))
    assert [job["seq"] for job in jobs] == list(range(1, 489))
    old, new = jobs[:438], jobs[438:]
    assert len({job["source"] for job in old}) == 1
    assert len({job["source"] for job in new}) == 1
    assert old[0]["source"] != new[0]["source"]
    assert [job["sequence"] for job in old] == list(range(1, 439))
    assert [job["payload"] for job in old] == MESSAGES
    assert [job["sequence"] for job in new] == list(range(1, 51))
    assert [job["payload"] for job in new] == MESSAGES[:50]
    assert summary.sent == 488
    assert (await queue_stats(http, server))["last_seq"] == 488


async def test_spool_keeps_batches_in_order_across_reopen(spool_dir: Path) -> None:
    batches = [Batch("src", 1, (b'{"a":1}', b'{"a":2}')), Batch("src", 3, (b'{"a":3}',))]
    spool = Spool(spool_dir)
    await spool.open()
    try:
        for batch in batches:
            await spool.put(batch)
        head = await spool.next_batch()
        assert head.batch == batches[0]
        assert Batch.decode("src", 1, head.body) == batches[0]
        with pytest.raises(StartupError, match="in use by another bridge"):
            await Spool(spool_dir).open()
    finally:
        await spool.close()
    spool = Spool(spool_dir)
    await spool.open()
    try:
        assert (spool.pending_batches, spool.pending_events) == (2, 3)
        head = await spool.next_batch()
        assert head.batch == batches[0]  # not settled: still first
        letter = DeadLetter(batch=Batch("src", 1, (b'{"a":1}',)), status=400, detail="bad",
                            failed_at=1.0)
        await spool.settle(head, [letter])
        head = await spool.next_batch()
        assert head.batch == batches[1]
        await spool.settle(head)
        assert (spool.pending_batches, spool.pending_events, spool.dead) == (0, 0, 1)
        assert await spool.dead_letters() == [letter]
        waiter = asyncio.create_task(spool.next_batch())
        await asyncio.sleep(0)
        assert not waiter.done()
        await spool.put(Batch("src", 4, (b'{"a":4}',)))
        assert (await asyncio.wait_for(waiter, 10)).batch.sequence == 4
    finally:
        await spool.close()


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_refused_event_is_set_aside_and_the_bridge_moves_on(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
) -> None:
    # The collector refuses bodies over 8 KiB (413) and events nested deeper than 32 (400).
    server = recorder_server(server_process, record_file,
                             env={"COLLECTOR_SERVER_MAX_BODY_BYTES": "8192"})
    await asyncio.to_thread(server.start)
    deep: Any = 1
    for _ in range(40):
        deep = {"x": deep}
    bad = orjson.dumps({"Event": "Deep", "Data": deep})
    good = LINES[:120]
    session = Session(b"".join(good[:60]) + bad + b"".join(good[60:]))
    async with (FakeGame([session]) as game,
                RunningBridge(config(spool_dir, game, server.url, batch_max_events=200,
                                     batch_max_delay=0.5)) as bridge):
        await wait_until(lambda: len(unique_jobs(read_records(record_file))) >= 120,
                         timeout=30, what="the 120 good messages")
        summary = await bridge.stop()
    jobs = unique_jobs(read_records(record_file))
    assert [job["payload"] for job in jobs] == MESSAGES[:120]
    assert [job["sequence"] for job in jobs] == [*range(1, 61), *range(62, 122)]
    assert summary.set_aside == 1
    assert summary.sent == 120
    spool = Spool(spool_dir)
    await spool.open()
    try:
        letters = await spool.dead_letters()
        assert spool.pending_events == 0
    finally:
        await spool.close()
    assert len(letters) == 1
    assert letters[0].status == 400
    assert letters[0].batch.sequence == 61
    assert letters[0].batch.events == (bad,)
    assert "invalid_event" in letters[0].detail
    shown = subprocess.run(
        [sys.executable, "-m", "collector", "bridge", "--spool-dir", str(spool_dir),
         "--show-dead"], capture_output=True, check=True, timeout=60,
    ).stdout.splitlines()
    assert [orjson.loads(line)["events"] for line in shown] == [[orjson.loads(bad)]]


@pytest.mark.slow
async def test_a_wrong_token_never_empties_the_spool(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
) -> None:
    server = recorder_server(server_process, record_file,
                             env={"COLLECTOR_SERVER_TOKEN": "right-token"})
    await asyncio.to_thread(server.start)
    data = b"".join(LINES[:30])
    with capture_logs() as logs:
        async with (FakeGame([Session(data)]) as game,
                    RunningBridge(config(spool_dir, game, server.url, token="wrong-token",
                                         backoff_cap=0.1)) as bridge):
            await wait_until(
                lambda: sum(e["event"] == "collector_refuses" for e in logs) >= 3,
                timeout=30, what="three refusals")
            summary = await bridge.stop()
    refusal = next(e for e in logs if e["event"] == "collector_refuses")
    assert refusal["status"] == 401
    assert summary.set_aside == 0
    assert summary.sent == 0
    assert summary.spooled == 30
    assert read_records(record_file) == []

    # With the right token, the spooled messages go through.
    bridge = RunningBridge(config(spool_dir, free_port(), server.url, token="right-token"))
    try:
        await wait_until(lambda: len(unique_jobs(read_records(record_file))) >= 30,
                         timeout=30, what="30 messages handled")
    finally:
        summary = await bridge.stop()
    assert [job["payload"] for job in unique_jobs(read_records(record_file))] == MESSAGES[:30]
    assert summary.sent == 30


# -- the game side ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_bridge_reconnects_when_the_game_closes_and_reopens(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
) -> None:
    server = recorder_server(server_process, record_file)
    await asyncio.to_thread(server.start)
    torn = LINES[200][: len(LINES[200]) // 2]
    first = Session(b"".join(LINES[:200]) + torn)
    game = await FakeGame([first]).start()
    try:
        async with RunningBridge(config(spool_dir, game, server.url)) as bridge:
            await wait_until(first.done.is_set, timeout=20, what="the first game session")
            await game.stop()  # the game quits: nothing listens on its port
            await wait_until(lambda: len(unique_jobs(read_records(record_file))) >= 200,
                             timeout=30, what="the first 200 messages")
            second = Session(b"".join(LINES[200:]), hold=asyncio.Event())  # then stays open
            game = await FakeGame([second], port=game.port).start()  # the game is back
            await wait_until(lambda: len(unique_jobs(read_records(record_file))) >= 438,
                             timeout=30, what="all 438 messages")
            summary = await bridge.stop()
    finally:
        await game.stop()
    jobs = unique_jobs(read_records(record_file))
    assert [job["payload"] for job in jobs] == MESSAGES
    sources = [job["source"] for job in jobs]
    assert len(set(sources[:200])) == 1
    assert len(set(sources[200:])) == 1
    assert sources[0] != sources[200]  # a new game connection is a new source
    assert [job["sequence"] for job in jobs] == [*range(1, 201), *range(1, 239)]
    assert summary.connections == 2
    assert summary.received == 438
    assert summary.dropped_bytes == len(torn)  # the torn message is not glued to the next


async def test_a_stop_while_the_game_refuses_always_ends_the_bridge(spool_dir: Path) -> None:
    """SIGTERM (the stop event) while the reader retries a game that refuses: with no
    pause between tries, the cancellation lands as a connection attempt fails, which
    asyncio.wait_for swallowed on 3.11, and the bridge retried on forever (a CI hang)."""
    cfg = config(spool_dir, free_port(), f"http://127.0.0.1:{free_port()}",
                 reconnect_interval=1e-4)
    for attempt in range(20):
        bridge = RunningBridge(cfg)
        await asyncio.sleep(0.01 + attempt / 1000)  # the reader is retrying by now
        bridge.stop_event.set()
        done, _ = await asyncio.wait([bridge.task], timeout=10)  # a hang guard, not a figure
        if not done:
            bridge.task.cancel()
            await asyncio.wait([bridge.task], timeout=10)
            pytest.fail(f"stop {attempt + 1} did not end the bridge (the reader retried on)")
        summary = bridge.task.result()
        assert (summary.connections, summary.received) == (0, 0)


# -- pieces -----------------------------------------------------------------------------------


async def test_retries_honour_retry_after_and_resend_the_same_request(
    aiohttp_server: Any,
) -> None:
    """A stand-in collector answers 503, 507 (with Retry-After) and 500, then 202."""
    from aiohttp import web

    from collector.bridge.poster import Poster

    answers = [(503, {"Retry-After": "0.15"}), (507, {"Retry-After": "0.1"}), (500, {}),
               (202, {})]
    seen: list[tuple[dict[str, str], bytes]] = []

    async def events(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        status, headers = answers[len(seen) - 1]
        return web.json_response({"error": "busy", "detail": "x"}, status=status,
                                 headers=headers)

    app = web.Application()
    app.router.add_post("/v1/events", events)
    server = await aiohttp_server(app)
    batch = Batch("src", 7, (b'{"a":1}', b'{"a":2}'))
    async with aiohttp.ClientSession() as session:
        poster = Poster(session, events_url(str(server.make_url("/"))), token="t",
                        backoff_base=0.01, backoff_cap=0.05)
        with capture_logs() as logs:
            assert await poster.deliver(batch) == []
    delays = [e["retry_in_s"] for e in logs if e["event"] == "post_failed"]
    assert delays[:2] == [0.15, 0.1]
    assert 0 < delays[2] <= 0.05
    assert len(seen) == 4
    for headers, body in seen:
        assert headers["Idempotency-Key"] == batch.key
        assert (headers["X-Source"], headers["X-Sequence"]) == ("src", "7")
        assert headers["Authorization"] == "Bearer t"
        assert headers["Content-Encoding"] == "gzip"
        assert body == b'{"a":1}\n{"a":2}\n'  # aiohttp inflated the gzip body
    assert poster.counters.sent_events == 2
    assert poster.counters.failed_attempts == 3


async def test_batcher_bounds_count_bytes_and_age() -> None:
    closed: list[Batch] = []
    batcher = Batcher(closed.append, max_events=3, max_bytes=40, max_delay=0.01)
    batcher.start("s")
    for i in range(7):
        batcher.add(b'{"i":%d}' % i)
    assert [(b.sequence, len(b.events)) for b in closed] == [(1, 3), (4, 3)]
    await wait_until(lambda: len(closed) == 3, timeout=10, what="the age bound")
    assert (closed[2].sequence, closed[2].events) == (7, (b'{"i":6}',))
    batcher.add(b'{"big":"' + b"x" * 30 + b'"}')  # over max_bytes alone: its own batch
    batcher.add(b'{\n"i": 8}')  # made one line for NDJSON
    batcher.start("t")  # a new source closes the open batch
    assert [len(b.events) for b in closed[3:]] == [1, 1]
    assert closed[4].events == (b'{"i":8}',)
    assert closed[4].key == "s:9+1"
    batcher.add(b"{}")
    batcher.flush()
    assert (closed[5].source, closed[5].sequence) == ("t", 1)


def test_batch_keys_halves_and_body() -> None:
    batch = Batch("src", 10, (b'{"a":1}', b'{"a":2}', b'{"a":3}'))
    first, second = batch.halves()
    assert (first.sequence, first.events, second.sequence, second.events) == (
        10, (b'{"a":1}',), 11, (b'{"a":2}', b'{"a":3}'))
    assert len({batch.key, first.key, second.key}) == 3
    assert batch.encode() == batch.encode()  # a retry sends the same bytes
    assert Batch.decode("src", 10, batch.encode()) == batch


def test_addresses() -> None:
    assert parse_host_port("127.0.0.1:49123") == ("127.0.0.1", 49123)
    assert parse_host_port("gamingpc") == ("gamingpc", 49123)
    assert parse_host_port("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port("a:b:c")
    assert events_url("http://server:8765") == "http://server:8765/v1/events"
    assert events_url("https://x/collector/") == "https://x/collector/v1/events"
    assert events_url("http://x/v1/events") == "http://x/v1/events"
    with pytest.raises(ValueError, match="URL"):
        events_url("server:8765")


def test_the_bridge_path_does_not_import_uvloop() -> None:
    code = (
        "import sys\n"
        "from collector.cli import build_parser\n"
        "build_parser()\n"
        "import collector.bridge.relay, collector.cli.bridge, collector.bridge.replay\n"
        "assert 'uvloop' not in sys.modules, 'uvloop imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_bridge_cli_rejects_bad_options(tmp_path: Path) -> None:
    from collector.cli import main

    assert main(["bridge", "--to", "server:8765", "--spool-dir", str(tmp_path)]) == 2
    assert main(["bridge", "--to", "http://x", "--token-file", str(tmp_path / "none"),
                 "--spool-dir", str(tmp_path)]) == 2
    assert main(["bridge", "--to", "http://x", "--game", "a:b:c"]) == 2


@pytest.mark.slow
async def test_a_name_the_collector_does_not_answer_to_never_empties_the_spool(
    server_process: ServerFactory, record_file: Path, spool_dir: Path,
) -> None:
    """421 (the Host allowlist) is a setting to fix, like a wrong token: the bridge keeps
    everything in its spool and says which setting, it sets nothing aside."""
    server = recorder_server(server_process, record_file,
                             env={"COLLECTOR_SERVER_ALLOWED_HOSTS": "homeserver.lan"})
    await asyncio.to_thread(server.start)
    by_name = server.url.replace("127.0.0.1", "localhost")  # not in the allowlist
    data = b"".join(LINES[:30])
    with capture_logs() as logs:
        async with (FakeGame([Session(data)]) as game,
                    RunningBridge(config(spool_dir, game, by_name, backoff_cap=0.1)) as bridge):
            await wait_until(
                lambda: sum(e["event"] == "collector_refuses" for e in logs) >= 3,
                timeout=30, what="three refusals")
            summary = await bridge.stop()
    refusal = next(e for e in logs if e["event"] == "collector_refuses")
    assert refusal["status"] == 421
    assert "allowed_hosts" in refusal["hint"]
    assert summary.set_aside == 0
    assert summary.spooled == 30
    assert read_records(record_file) == []
