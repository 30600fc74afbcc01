"""`collector replay` and `collector record` against a real collector and a fake game."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.bridge.replay import detect_format, replay, unwrap, wrap
from collector.console import StatusLine
from tests.support.bridge import RECORD_ENV, FakeGame, Session, read_records, unique_jobs
from tests.support.paths import CAPTURE_JSONL, CAPTURE_STREAM
from tests.support.server import ServerProcess

STREAM = CAPTURE_STREAM.read_bytes()
JSONL = CAPTURE_JSONL.read_bytes()
LINES = JSONL.splitlines()
MESSAGES = [orjson.loads(line) for line in LINES]

ServerFactory = Callable[..., ServerProcess]


async def collector(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `python -m collector ARGS`; (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
async def server(server_process: ServerFactory, tmp_path: Path) -> ServerProcess:
    proc = server_process(args=["--handler", "tests.support.bridge:record"],
                          env={RECORD_ENV: str(tmp_path / "record.jsonl")})
    await asyncio.to_thread(proc.start)
    return proc


def handled(tmp_path: Path) -> list[dict[str, object]]:
    return unique_jobs(read_records(tmp_path / "record.jsonl"))


async def wait_handled(tmp_path: Path, count: int) -> list[dict[str, object]]:
    """Replay returns once the collector stored everything; handling follows shortly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(jobs := handled(tmp_path)) < count:
        assert loop.time() < deadline, f"{len(jobs)} of {count} messages handled"
        await asyncio.sleep(0.02)
    return jobs


@pytest.mark.slow
async def test_replay_sends_the_raw_stream_as_fast_as_possible(
    server: ServerProcess, tmp_path: Path
) -> None:
    code, out = await collector("replay", str(CAPTURE_STREAM), "--to", server.url, "--fast")
    assert code == 0, out
    assert '"format":"stream"' in out
    jobs = await wait_handled(tmp_path, 438)
    assert [job["payload"] for job in jobs] == MESSAGES
    assert [job["sequence"] for job in jobs] == list(range(1, 439))
    sources = {job["source"] for job in jobs}
    assert len(sources) == 1
    assert str(sources.pop()).startswith("replay-")
    assert len(jobs) == 438  # and nothing else was stored


@pytest.mark.slow
async def test_replay_paces_json_lines_and_shows_progress(
    server: ServerProcess, tmp_path: Path
) -> None:
    recording = tmp_path / "part.jsonl"
    recording.write_bytes(b"\n".join(LINES[:40]) + b"\n")
    screen = io.StringIO()
    summary = await replay(recording, server.url, rate=400, speed=2, source="my-replay",
                           status_line=StatusLine(screen))
    assert (summary.format, summary.messages, summary.sent, summary.set_aside) == (
        "jsonl", 40, 40, 0)
    jobs = await wait_handled(tmp_path, 40)
    assert [job["payload"] for job in jobs] == MESSAGES[:40]
    assert {job["source"] for job in jobs} == {"my-replay"}
    shown = screen.getvalue()
    assert shown.startswith("\r")
    assert "100.0%" in shown
    assert shown.endswith("\n")


@pytest.mark.slow
async def test_record_then_replay_with_recorded_times(
    server: ServerProcess, tmp_path: Path
) -> None:
    game = await FakeGame([Session(b"".join(LINES[:60]))]).start()
    recording = tmp_path / "timed.jsonl"
    try:
        code, out = await collector("record", "--game", f"127.0.0.1:{game.port}", "-o",
                                    str(recording), "--jsonl", "--timestamps")
    finally:
        await game.stop()
    assert code == 0, out
    unwrapped = [unwrap(line) for line in recording.read_bytes().splitlines()]
    assert [raw for _, raw in unwrapped] == LINES[:60]
    stamps = [stamp for stamp, _ in unwrapped]
    assert all(stamp is not None for stamp in stamps)
    assert stamps == sorted(stamps)  # type: ignore[type-var]

    code, out = await collector("replay", str(recording), "--to", server.url, "--speed", "4")
    assert code == 0, out
    assert '"format":"jsonl"' in out
    jobs = await wait_handled(tmp_path, 60)
    assert [job["payload"] for job in jobs] == MESSAGES[:60]


@pytest.mark.parametrize(("flags", "expected"), [([], STREAM), (["--jsonl"], JSONL)],
                         ids=["raw", "jsonl"])
async def test_record_writes_the_games_stream(tmp_path: Path, flags: list[str],
                                              expected: bytes) -> None:
    game = await FakeGame([Session(STREAM)]).start()
    out_file = tmp_path / "capture"
    try:
        code, out = await collector("record", "--game", f"127.0.0.1:{game.port}", "-o",
                                    str(out_file), *flags)
    finally:
        await game.stop()
    assert code == 0, out
    assert '"messages":438' in out
    assert out_file.read_bytes() == expected


async def test_record_refuses_timestamps_on_a_raw_recording(tmp_path: Path) -> None:
    code, out = await collector("record", "-o", str(tmp_path / "x"), "--timestamps")
    assert code == 2
    assert "--timestamps needs --jsonl" in out


async def test_replay_refuses_a_missing_file(tmp_path: Path) -> None:
    code, out = await collector("replay", str(tmp_path / "nope"), "--to", "http://x:1")
    assert code == 2
    assert "no such file" in out


def test_formats_are_detected() -> None:
    assert detect_format(STREAM[:65536]) == "stream"
    assert detect_format(JSONL[:65536]) == "jsonl"
    assert detect_format(b'{"a": 1}\r\n{"b": 2}') == "jsonl"
    assert detect_format(b"") == "stream"


def test_wrapped_lines_keep_the_message_bytes() -> None:
    line = wrap(LINES[0], 1700000000.25)
    assert unwrap(line) == (1700000000.25, LINES[0])
    assert orjson.loads(line)["message"] == MESSAGES[0]
    # Laid out differently, the message is re-encoded but equal.
    other = orjson.dumps({"message": {"a": 1.5}, "recorded_at": 3})
    assert unwrap(b'{"recorded_at": 3, "message": {"a": 1.5}}') == (3.0, b'{"a":1.5}')
    assert unwrap(other) == (None, other)  # not our prefix: an ordinary message
    odd = b'{"recorded_at": 3, "message": 4}'
    assert unwrap(odd) == (None, odd)
    assert unwrap(LINES[1]) == (None, LINES[1])
