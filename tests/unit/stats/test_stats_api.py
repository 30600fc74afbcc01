"""Statistics end to end: real HTTP API, real queue and worker, real SQLite in tmp_path."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from collector.jobs import Job
from collector.stats.store import StatsStore
from tests.support.paths import CAPTURE_JSONL, REPO
from tests.support.server import ClientFactory, ServerProcess, SettingsFactory

pytestmark = pytest.mark.both_backends

GUID = "1F7ED23011F1435166EBAB919DB5566D"
WAIT_S = 30.0  # a ceiling for "the worker has caught up", never a measured time

Client = TestClient[Any, Any]


def capture_lines() -> list[bytes]:
    """The recording's messages, one JSON object per line, byte for byte."""
    return CAPTURE_JSONL.read_bytes().splitlines()


def ndjson(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


async def drained(get: Callable[[str], Any], last_seq: int) -> None:
    """Wait until the worker has finished every job up to `last_seq`."""
    deadline = time.monotonic() + WAIT_S
    while True:
        async with get("/v1/queue") as resp:
            q = await resp.json()
        if q["last_seq"] >= last_seq and q["pending"] == 0 and q["in_flight"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not catch up: {q}")
        await asyncio.sleep(0.02)


async def post_ok(client: Client, body: bytes, **headers: str) -> dict[str, Any]:
    resp = await client.post("/v1/events", data=body,
                             headers={"Content-Type": "application/x-ndjson", **headers})
    assert resp.status == 202, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def the_match(client: Client) -> dict[str, Any]:
    page = await get_json(client, "/v1/matches")
    assert len(page["matches"]) == 1, page
    assert page["next"] is None
    return dict(await get_json(client, f"/v1/matches/{page['matches'][0]['id']}"))


def numbers(match: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """name -> (team, score, goals) of the match's player lines."""
    return {p["name"]: (p["team"], p["score"], p["goals"]) for p in match["players"]}


async def test_the_recording_through_http_and_the_worker(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    answer = await post_ok(client, ndjson(capture_lines()))
    await drained(client.get, answer["last_seq"])

    page = await get_json(client, "/v1/matches")
    (summary,) = page["matches"]
    assert summary["guid"] == GUID
    assert [{k: t[k] for k in ("num", "name", "score")} for t in summary["teams"]] == [
                                {"num": 0, "name": "Blue", "score": 0},
                                {"num": 1, "name": "Orange", "score": 1}]
    assert (summary["ended_at"], summary["winner"], summary["overtime"]) == (None, None, False)
    assert {"id", "guid", "arena", "playlist", "started_at", "ended_at", "overtime", "winner",
            "teams"} <= set(summary)

    match = await get_json(client, f"/v1/matches/{summary['id']}")
    assert numbers(match) == {"Zone Killa": (1, 326, 1), "nickm": (0, 0, 0)}
    zone = next(p for p in match["players"] if p["name"] == "Zone Killa")
    assert {k: zone[k] for k in ("shots", "assists", "saves", "touches", "demos")} == \
        {"shots": 1, "assists": 0, "saves": 0, "touches": 266, "demos": 0}
    assert match["goals"] == []
    assert await get_json(client, f"/v1/matches/{GUID}") == match  # by guid too

    players = await get_json(client, "/v1/players")
    assert {p["name"]: (p["matches"], p["goals"], p["score"]) for p in players["players"]} == \
        {"Zone Killa": (1, 1, 326), "nickm": (1, 0, 0)}
    player = await get_json(client, f"/v1/players/{zone['player_id']}")
    assert (player["name"], player["goals"], player["score"]) == ("Zone Killa", 1, 326)
    assert [m["guid"] for m in player["recent_matches"]] == [GUID]


async def test_out_of_order_posts_with_x_sequence_end_in_the_same_state(
        make_client: ClientFactory, make_settings: SettingsFactory, tmp_path: Path) -> None:
    lines = capture_lines()
    in_order = await make_client(make_settings(server__data_dir=tmp_path / "in-order",
                                               worker__handlers=("stats",)))
    answer = await post_ok(in_order, ndjson(lines))
    await drained(in_order.get, answer["last_seq"])
    expected = await the_match(in_order)

    shuffled = await make_client(make_settings(server__data_dir=tmp_path / "shuffled",
                                               worker__handlers=("stats",)))
    # As a plugin with several requests in flight delivers them: batches of consecutive
    # events, the batches in the worst order (newest first).
    starts = list(range(0, len(lines), 10))
    for start in reversed(starts):
        answer = await post_ok(shuffled, ndjson(lines[start:start + 10]),
                               **{"X-Source": "bridge", "X-Sequence": str(start)})
    await drained(shuffled.get, len(lines))
    got = await the_match(shuffled)
    assert numbers(got) == {"Zone Killa": (1, 326, 1), "nickm": (0, 0, 0)}
    # The scoreboard; the derived statistics of ticks skipped as stale differ, as they must
    # (tests/unit/stats/test_stats_derived.py checks them out of order).
    assert scoreboard(got["players"], "stats") == scoreboard(expected["players"], "stats")
    assert scoreboard(got["teams"], "possession_s") == \
        scoreboard(expected["teams"], "possession_s")
    counters = await get_json(shuffled, "/v1/stats")
    assert counters["stale_skipped"] > 0


def scoreboard(rows: list[dict[str, Any]], derived: str) -> list[dict[str, Any]]:
    """Rows without their derived statistics."""
    return [{k: v for k, v in row.items() if k != derived} for row in rows]


def with_goals(lines: list[bytes]) -> list[bytes]:
    """The recording with a real goal and the bogus echo after its replay in the middle."""
    real = {"Event": "GoalScored", "Data": json.dumps({
        "MatchGuid": GUID, "GoalSpeed": 91.5, "GoalTime": 20.0,
        "Scorer": {"Name": "Zone Killa", "Shortcut": 5, "TeamNum": 1}})}
    echo = {"Event": "GoalScored", "Data": json.dumps({
        "MatchGuid": GUID, "GoalSpeed": 0, "GoalTime": 0, "Scorer": {"Name": ""}})}
    return [*lines[:250], json.dumps(real).encode(), json.dumps(echo).encode(), *lines[250:]]


async def uninterrupted(tmp_path: Path, lines: list[bytes]) -> dict[str, Any]:
    """The same events applied in one go by the stats store itself."""
    store = StatsStore(tmp_path / "uninterrupted")
    await store.open()
    try:
        for seq, line in enumerate(lines, start=1):
            await store.apply(Job(seq=seq, payload=json.loads(line), received_at=0.0))
        page = await store.matches_page()
        match = await store.match(page["matches"][0]["id"])
        players = await store.players_page()
    finally:
        await store.close()
    assert match is not None
    return {"match": match, "players": players}


def comparable(match: dict[str, Any]) -> dict[str, Any]:
    """A match without the times of arrival, which differ from run to run."""
    goals = [{k: v for k, v in g.items() if k not in {"received_at", "seq"}}
             for g in match["goals"]]
    return {"players": match["players"], "teams": match["teams"], "goals": goals,
            "guid": match["guid"], "arena": match["arena"], "winner": match["winner"]}


@pytest.mark.slow
async def test_a_replay_after_sigkill_mid_match_gives_the_same_numbers(
        server_process: Callable[..., ServerProcess], tmp_path: Path) -> None:
    lines = with_goals(capture_lines())
    expected = await uninterrupted(tmp_path, lines)
    server = server_process(args=["--handler", "stats"])
    server.start()
    # No keep-alive: a pooled connection would point at the killed process.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(server.url, connector=connector) as http:
        headers = {"Content-Type": "application/x-ndjson"}
        async with http.post("/v1/events", data=ndjson(lines[:150]), headers=headers) as resp:
            assert resp.status == 202
        await drained(http.get, 150)
        async with http.post("/v1/events", data=ndjson(lines[150:330]),
                             headers=headers) as resp:
            assert resp.status == 202  # on disk; the worker is now busy with them
        server.kill()
        server.start()
        async with http.post("/v1/events", data=ndjson(lines[330:]), headers=headers) as resp:
            assert resp.status == 202
        await drained(http.get, len(lines))
        async with http.get("/v1/matches") as resp:
            (summary,) = (await resp.json())["matches"]
        async with http.get(f"/v1/matches/{summary['id']}") as resp:
            match = await resp.json()
        async with http.get("/v1/players") as resp:
            players = await resp.json()
    assert server.terminate() == 0
    assert numbers(match) == {"Zone Killa": (1, 326, 1), "nickm": (0, 0, 0)}
    assert [(g["scorer"], g["speed"]) for g in match["goals"]] == [("Zone Killa", 91.5)]
    assert comparable(match) == comparable(expected["match"])
    assert players == expected["players"]


async def test_the_query_api_wants_the_token(make_client: ClientFactory) -> None:
    client = await make_client(server__token="s3cret", worker__handlers=("stats",))
    for path in ("/v1/matches", "/v1/matches/1", "/v1/players", "/v1/players/1", "/v1/stats"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert (await resp.json())["error"] == "unauthorized"
    resp = await client.get("/v1/matches", headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 200
    assert await resp.json() == {"matches": [], "next": None}


@pytest.mark.parametrize("path", ["/v1/matches/999", "/v1/matches/NOPE", "/v1/players/999",
                                  "/v1/players/abc", "/v1/matches/99999999999999999999999"])
async def test_unknown_ids_are_404_in_the_error_shape(make_client: ClientFactory,
                                                      path: str) -> None:
    client = await make_client()
    body = await get_json(client, path, status=404)
    assert body["error"] == "not_found"
    assert isinstance(body["detail"], str)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "limit=-1",
                                   "before=x", "before=-3", "before=99999999999999999999"])
@pytest.mark.parametrize("path", ["/v1/matches", "/v1/players"])
async def test_bad_query_parameters_are_400(make_client: ClientFactory, path: str,
                                            query: str) -> None:
    client = await make_client()
    body = await get_json(client, f"{path}?{query}", status=400)
    assert body["error"] == "invalid_parameter"


async def test_pages_follow_next_newest_first(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    events = [json.dumps({"Event": "UpdateState", "Data": {
        "MatchGuid": f"G{i}", "Players": [{"Name": f"P{i}", "PrimaryId": f"Steam|{i}|0",
                                            "TeamNum": 0, "Score": i}]}}).encode()
        for i in range(7)]
    answer = await post_ok(client, ndjson(events))
    await drained(client.get, answer["last_seq"])
    for path, key, name in (("/v1/matches", "matches", "guid"), ("/v1/players", "players",
                                                                  "name")):
        seen: list[str] = []
        sizes: list[int] = []
        url = f"{path}?limit=3"
        while True:
            page = await get_json(client, url)
            sizes.append(len(page[key]))
            seen += [item[name] for item in page[key]]
            if page["next"] is None:
                break
            url = f"{path}?limit=3&before={page['next']}"
        prefix = "G" if key == "matches" else "P"
        assert seen == [f"{prefix}{i}" for i in reversed(range(7))]
        assert sizes == [3, 3, 1], sizes  # full pages, then the rest; no empty last page


async def run_cli(*args: str) -> tuple[int, str, str]:
    """`collector ARGS` in a subprocess (never blocking this loop, which serves the app)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_cli_prints_tables_from_the_database_and_from_a_daemon(
        make_client: ClientFactory, data_dir: Path) -> None:
    client = await make_client(worker__handlers=("stats",), server__token="tok")
    resp = await client.post("/v1/events", data=ndjson(capture_lines()),
                             headers={"Content-Type": "application/x-ndjson",
                                      "Authorization": "Bearer tok"})
    assert resp.status == 202
    deadline = time.monotonic() + WAIT_S
    while True:  # /v1/queue wants the token too
        q = await (await client.get("/v1/queue", headers={"Authorization": "Bearer tok"})).json()
        if q["pending"] == 0 and q["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, q
        await asyncio.sleep(0.02)

    code, out, _ = await run_cli("matches", "--data-dir", str(data_dir))
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "STARTED", "ARENA", "SCORE"]
    assert "Blue 0 - 1 Orange" in row
    assert "live" in row

    url = str(client.make_url("")).rstrip("/")
    code, out, _ = await run_cli("matches", "1", "--url", url, "--token", "tok")
    assert code == 0
    assert GUID in out
    zone = next(line for line in out.splitlines() if "Zone Killa" in line)
    assert zone.split()[:6] == ["1", "Zone", "Killa", "326", "1", "0"]

    code, out, _ = await run_cli("players", "--data-dir", str(data_dir))
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["Zone", "nickm"]

    code, out, err = await run_cli("players", "42", "--data-dir", str(data_dir))
    assert code == 1
    assert "no player '42'" in err
    code, _, err = await run_cli("matches", "--url", url)  # no token
    assert code == 1
    assert "401" in err
