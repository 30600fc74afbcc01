"""Logging: one JSON chain for structlog and stdlib, request_id and seq bound, no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.typing import EventDict

from collector.logs import configure_logging
from tests.support.model import wait_until as wait_until_sync
from tests.support.server import ClientFactory, ServerProcess, wait_until

TOKEN = "s3cr3t-T0KEN-in-no-log-9f81"
WAIT_S = 30.0  # a hang guard for the polls, not a speed requirement


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo configure_logging(): structlog defaults, root handlers and levels as before."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    level = root.level
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    access.setLevel(access_level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` parsed as a JSON object (fails on any other line)."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_json_lines_for_structlog_and_stdlib() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out, cache=False)
    structlog.get_logger("collector.test").info("hello", answer=42, who="é")
    logging.getLogger("aiohttp.server").warning("stdlib says %s", "hi")
    lines = json_lines(out.getvalue())
    assert len(lines) == 2
    for line in lines:
        assert {"event", "level", "timestamp"} <= set(line)
        assert isinstance(line["timestamp"], str)
        assert line["timestamp"]
    assert lines[0]["event"] == "hello"
    assert lines[0]["level"] == "info"
    assert (lines[0]["answer"], lines[0]["who"]) == (42, "é")
    assert lines[1]["event"] == "stdlib says hi"
    assert lines[1]["level"] == "warning"


def test_json_exception_is_rendered_in_the_line() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out, cache=False)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("t").exception("failed")
        logging.getLogger("aiohttp.server").exception("stdlib failed")
    lines = json_lines(out.getvalue())
    assert [line["event"] for line in lines] == ["failed", "stdlib failed"]
    assert all("boom" in json.dumps(line) for line in lines)
    assert all(line["level"] == "error" for line in lines)


def test_auto_format_on_a_file_is_json(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w", encoding="utf-8") as fh:
        configure_logging("info", "auto", stream=fh, cache=False)
        structlog.get_logger("t").info("to_a_file")
        logging.getLogger("aiohttp.server").info("stdlib_to_a_file")
    lines = json_lines((tmp_path / "log").read_text(encoding="utf-8"))
    assert [line["event"] for line in lines] == ["to_a_file", "stdlib_to_a_file"]


def test_console_format_when_asked() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out, cache=False)
    structlog.get_logger("t").info("readable_event", answer=42)
    logging.getLogger("aiohttp.server").warning("stdlib_readable")
    text = out.getvalue()
    lines = text.splitlines()
    assert len(lines) == 2
    assert "readable_event" in lines[0]
    assert "42" in lines[0]
    assert "stdlib_readable" in lines[1]
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_level_filters_both_chains() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out, cache=False)
    structlog.get_logger("t").info("dropped")
    logging.getLogger("aiohttp.server").info("dropped too")
    structlog.get_logger("t").warning("kept")
    logging.getLogger("aiohttp.server").error("kept too")
    assert [line["event"] for line in json_lines(out.getvalue())] == ["kept", "kept too"]


def test_journald_priority_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("info", "json", stream=fh, cache=False)
        structlog.get_logger("t").info("informative")
        logging.getLogger("aiohttp.server").error("bad")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("<6>")
    assert lines[1].startswith("<3>")
    assert json.loads(lines[0][3:])["event"] == "informative"
    assert json.loads(lines[1][3:])["event"] == "bad"


# -- bound context ------------------------------------------------------------------------


def _holding(entries: list[EventDict], value: Any) -> list[EventDict]:
    """The captured entries that carry `value` as one of their fields."""
    return [e for e in entries if any(v == value for v in e.values())]


async def test_rejected_request_log_carries_request_id(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        for _ in range(2):
            resp = await client.post("/v1/events", data=b'{"a": 1}',
                                     headers={"Content-Type": "application/json"})
            assert resp.status == 401
            await resp.read()
        resp = await client.post("/v1/events", data=b"[]",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 400
        await resp.read()
    rejected = [e for e in entries if e.get("status") in {400, 401}]
    assert len(rejected) == 3, entries
    ids = [e.get("request_id") for e in rejected]
    assert all(isinstance(i, str) and i for i in ids), rejected
    assert len(set(ids)) == 3  # one id per request, not one per connection
    assert [e["log_level"] for e in rejected] == ["info"] * 3  # the client's fault


async def test_log_handler_lines_carry_the_job_seq(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("log",))
    events = [{"marker": f"event-{n}"} for n in range(3)]
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        resp = await client.post("/v1/events", data=orjson.dumps(events),
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 202
        answer = await resp.json()
        await wait_until(lambda: all(_holding(entries, e) for e in events), timeout=WAIT_S,
                         what="a log line for each of the three events")
    seqs = range(answer["first_seq"], answer["last_seq"] + 1)
    for event, seq in zip(events, seqs, strict=True):
        lines = _holding(entries, event)
        assert [(line["event"], line.get("seq")) for line in lines] == [("job", seq)], entries


# -- the token stays secret ---------------------------------------------------------------


async def test_token_never_logged_in_process(make_client: ClientFactory,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out, cache=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    client = await make_client(server__token_file=token_file, worker__handlers=("log",))
    wrong_resp = await client.post(
        "/v1/events", data=b'{"a": 1}',
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {TOKEN[:-2]}xx"},
    )
    assert wrong_resp.status == 401
    assert TOKEN not in (await wrong_resp.text())
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": TOKEN}):
        resp = await client.post("/v1/events", data=b'{"a": 2}',
                                 headers={"Content-Type": "application/json", **headers})
        await resp.read()

    async def processed() -> bool:
        stats = await (await client.get("/v1/queue",
                                        headers={"Authorization": f"Bearer {TOKEN}"})).json()
        return bool(stats["processed_total"] == 1)

    await wait_until(processed, timeout=WAIT_S, what="the one accepted event processed")
    await client.close()
    text = out.getvalue()
    captured = capsys.readouterr()
    logged = [json.loads(line) for line in text.splitlines()]
    # Both refusals were logged (without the token), and the accepted event's job line.
    assert [(e["status"], e["error"]) for e in logged if e["event"] == "request_rejected"] == [
        (401, "unauthorized"), (401, "unauthorized")], text
    assert [e["payload"] for e in logged if e["event"] == "job"] == [{"a": 2}], text
    for where in (text, captured.out, captured.err):
        assert TOKEN not in where
        assert TOKEN[:-2] not in where


@pytest.mark.slow
def test_token_never_logged_by_a_real_server(
    server_process: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    server = server_process(
        args=["--handler", "log"],
        env={"COLLECTOR_SERVER_TOKEN": TOKEN, "COLLECTOR_LOG_LEVEL": "debug"},
    )
    server.start()
    statuses = []
    for auth in (f"Bearer {TOKEN}x", f"Bearer {TOKEN}", TOKEN):
        req = urllib.request.Request(
            f"{server.url}/v1/events", data=b'{"hello": "world"}', method="POST",
            headers={"Content-Type": "application/json", "Authorization": auth},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                statuses.append(resp.status)
        except urllib.error.HTTPError as err:
            err.read()
            statuses.append(err.code)
    assert statuses == [401, 202, 401]
    queue = urllib.request.Request(f"{server.url}/v1/queue",
                                   headers={"Authorization": f"Bearer {TOKEN}"})

    def processed() -> bool:
        with urllib.request.urlopen(queue, timeout=5) as resp:
            return bool(json.loads(resp.read())["processed_total"] == 1)

    wait_until_sync(processed, "the one accepted event processed", timeout=WAIT_S)
    assert server.terminate() == 0, server.output()[-3000:]
    output = server.output()
    assert "hello" in output  # the log handler's line made it out
    assert TOKEN not in output
