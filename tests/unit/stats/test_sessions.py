"""Sessions: a player's matches split where the gap from the previous match's end to the
next start reaches [stats] session_gap_minutes (30:00 splits, 29:59 does not).

The data is real stats.db files built by the store's own apply from Stats API messages
(tests/support/season.py), the derived statistics written straight into the lines
where a test needs them; the HTTP tests run the real application, the command tests the
real `python -m collector` against the data dir and against a real daemon.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from collector.stats.derived import aggregate, rounded
from collector.stats.sessions import parse_session_id, streak
from collector.stats.store import StatsStore
from tests.support.model import one_line, run_cli
from tests.support.season import (
    ANN,
    BOB,
    MATCH_S,
    T0,
    Game,
    build,
    sample_stats,
    season,
    set_stats,
)
from tests.support.server import ClientFactory, ServerProcess
from tests.support.stats import api, update
from tests.unit.stats.test_stats_api import drained

pytestmark = pytest.mark.both_backends

GAP_S = 30 * 60.0
#: The season's sessions, newest first (by first match start, then match id, player id).
ORDER = ["2.3", "1.3", "3.2", "2.1", "1.1"]

Client = TestClient[Any, Any]


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[StatsStore]:
    await build(data_dir)
    s = StatsStore(data_dir, readonly=True)
    await s.open()
    yield s
    await s.close()


async def all_sessions(store: StatsStore, gap_s: float = GAP_S, **kw: Any) -> list[Any]:
    page = await store.sessions_page(gap_s=gap_s, limit=100, **kw)
    assert page is not None
    assert page["next"] is None
    return list(page["sessions"])


async def test_the_season_splits_as_its_table_says(store: StatsStore) -> None:
    sessions = await all_sessions(store)
    assert [s["id"] for s in sessions] == ORDER
    by_id = {s["id"]: s for s in sessions}
    assert {k: (s["player"], s["matches"], s["wins"], s["losses"], s["streak"])
            for k, s in by_id.items()} == {
        "1.1": ({"id": 1, "name": "Ann"}, 2, 1, 1, {"kind": "L", "length": 1}),
        "1.3": ({"id": 1, "name": "Ann"}, 3, 2, 0, {"kind": "W", "length": 2}),
        "2.1": ({"id": 2, "name": "Bob"}, 1, 0, 1, {"kind": "L", "length": 1}),
        "2.3": ({"id": 2, "name": "Bob"}, 3, 0, 2, {"kind": "L", "length": 2}),
        "3.2": ({"id": 3, "name": "Cid"}, 1, 1, 0, {"kind": "W", "length": 1}),
    }
    games = season()
    # From the first match's start to the last one's end; a live last match: no end yet.
    assert (by_id["1.1"]["started_at"], by_id["1.1"]["ended_at"]) == (games[0].start,
                                                                       games[1].end)
    assert (by_id["1.3"]["started_at"], by_id["1.3"]["ended_at"]) == (games[2].start, None)
    assert by_id["1.3"]["totals"]["score"] == 500 + 250 + 20
    assert by_id["1.3"]["averages"]["score"] == pytest.approx((500 + 250 + 20) / 3)


@pytest.mark.parametrize(("gap", "sessions"), [
    (1799.0, [["g1", "g2"]]),            # 29:59: the same session
    (1800.0, [["g2"], ["g1"]]),          # 30:00: a new one
    (1800.5, [["g2"], ["g1"]]),
])
async def test_the_gap_is_measured_from_the_previous_end(data_dir: Path, gap: float,
                                                         sessions: list[list[str]]) -> None:
    end1 = T0 + MATCH_S
    await build(data_dir, [
        Game("g1", T0, end1, ((*ANN, 0, 100, 1),), 0),
        Game("g2", end1 + gap, end1 + gap + MATCH_S, ((*ANN, 0, 100, 1),), 0),
    ])
    store = StatsStore(data_dir, readonly=True)
    await store.open()
    try:
        found = await all_sessions(store)
        details = [await store.session(parse_session_id(s["id"]) or (0, 0), gap_s=GAP_S)
                   for s in found]
    finally:
        await store.close()
    assert [[m["guid"] for m in d["matches"]] for d in details if d] == sessions


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_match_without_an_end_counts_from_its_start(data_dir: Path) -> None:
    db = await build(data_dir)
    with sqlite3.connect(db) as conn:  # match 1 never ended: 2 starts 35:00 after its start
        conn.execute("UPDATE matches SET ended_at = NULL WHERE guid = 'g1'")
    conn.close()
    store = StatsStore(data_dir, readonly=True)
    await store.open()
    try:
        ann = await all_sessions(store, player=1)
    finally:
        await store.close()
    assert [(s["id"], s["matches"]) for s in ann] == [("1.3", 3), ("1.2", 1), ("1.1", 1)]


async def test_the_gap_is_a_setting(store: StatsStore) -> None:
    # 20 minutes: 29:59 splits too; 24 hours: each player has one session.
    assert [s["id"] for s in await all_sessions(store, gap_s=20 * 60.0)] == \
        ["2.3", "1.3", "3.2", "1.2", "2.1", "1.1"]
    assert [s["id"] for s in await all_sessions(store, gap_s=24 * 3600.0)] == \
        ["3.2", "2.1", "1.1"]


async def test_pages_follow_the_cursor_and_the_player_filter(store: StatsStore) -> None:
    seen, before = [], None
    while True:
        page = await store.sessions_page(gap_s=GAP_S, limit=2, before=before)
        assert page is not None
        assert len(page["sessions"]) <= 2
        seen += [s["id"] for s in page["sessions"]]
        if page["next"] is None:
            break
        assert page["next"] == seen[-1]
        before = parse_session_id(page["next"])
    assert seen == ORDER
    assert [s["id"] for s in await all_sessions(store, player=2)] == ["2.3", "2.1"]
    assert await all_sessions(store, player=99) == []
    assert await store.sessions_page(gap_s=GAP_S, limit=2, before=(1, 999)) is None


async def test_a_session_shows_its_matches_and_unknown_ones_are_none(
        store: StatsStore) -> None:
    session = await store.session((1, 3), gap_s=GAP_S)
    assert session is not None
    assert [(m["guid"], m["team"], m["won"], m["score"]) for m in session["matches"]] == \
        [("g3", 0, True, 500), ("g4", 0, True, 250), ("g5", 0, None, 20)]
    listed = next(s for s in await all_sessions(store) if s["id"] == "1.3")
    assert {**session, "matches": 3} == listed
    # Match 4 is inside session 1.3, match 2 is not Bob's, player 9 does not exist.
    for key in ((1, 4), (2, 2), (9, 1)):
        assert await store.session(key, gap_s=GAP_S) is None


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_session_stats_are_the_aggregate_of_its_matches(data_dir: Path) -> None:
    db = await build(data_dir)
    s3, s4 = sample_stats(3.0), sample_stats(4.0)
    set_stats(db, "g3", ANN[1], s3)
    set_stats(db, "g4", ANN[1], s4)
    set_stats(db, "g5", ANN[1], None)  # no statistics (NULL): left out
    set_stats(db, "g1", BOB[1], sample_stats(9.0))
    for guid in ("g3", "g4", "g5"):
        set_stats(db, guid, BOB[1], None)
    store = StatsStore(data_dir, readonly=True)
    await store.open()
    try:
        session = await store.session((1, 3), gap_s=GAP_S)
        bob = await store.session((2, 3), gap_s=GAP_S)
    finally:
        await store.close()
    assert session is not None
    assert bob is not None
    # The aggregate, rounded as a match's own statistics are (0.1 uu, else 0.01).
    assert session["stats"] == rounded(aggregate([s3, s4]))
    assert session["stats"]["tracked_s"] == 420.0
    assert all(v == round(v, 2) for v in session["stats"].values() if isinstance(v, float))
    assert [m["arena_name"] for m in session["matches"]] == ["DFH Stadium"] * 3
    assert [m["stats"] for m in session["matches"]] == [s3, s4, None]
    # No match of the session has statistics: every key, null.
    assert set(bob["stats"]) == set(s3)
    assert set(bob["stats"].values()) == {None}


def test_a_streak_is_the_run_the_decided_results_end_with() -> None:
    assert streak([]) is None
    assert streak([True, False, False]) == {"kind": "L", "length": 2}
    assert streak([False, True, True, True]) == {"kind": "W", "length": 3}


def test_session_ids_are_two_numbers() -> None:
    assert parse_session_id("12.345") == (12, 345)
    for bad in ("12", "12.", ".3", "a.b", "1.2.3", "-1.2", "1.2 ", "\u0661.\u0662",
                "9" * 20 + ".1"):
        assert parse_session_id(bad) is None, bad


# -- HTTP ------------------------------------------------------------------------------------


async def get(client: Client, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_the_routes_page_filter_and_refuse(data_dir: Path,
                                                 make_client: ClientFactory) -> None:
    await build(data_dir)
    client = await make_client(worker__handlers=("stats",))
    page = await get(client, "/v1/sessions?limit=3")
    assert [s["id"] for s in page["sessions"]] == ORDER[:3]
    assert page["next"] == ORDER[2]
    rest = await get(client, f"/v1/sessions?limit=3&before={page['next']}")
    assert [s["id"] for s in rest["sessions"]] == ORDER[3:]
    assert rest["next"] is None
    ann = await get(client, "/v1/sessions?player=1")
    assert [s["id"] for s in ann["sessions"]] == ["1.3", "1.1"]

    session = await get(client, "/v1/sessions/1.1")
    assert {"id", "player", "started_at", "ended_at", "matches", "wins", "losses",
            "stats"} <= set(session)
    assert [m["guid"] for m in session["matches"]] == ["g1", "g2"]

    for path in ("/v1/sessions/1.2", "/v1/sessions/9.1", "/v1/sessions/1.999"):
        assert (await get(client, path, 404))["error"] == "not_found"
    for path in ("/v1/sessions/abc", "/v1/sessions/1", "/v1/sessions?before=x",
                 "/v1/sessions?before=1.999", "/v1/sessions?player=Ann",
                 "/v1/sessions?limit=0", "/v1/sessions?format=xml"):
        answer = await get(client, path, 400)
        assert answer["error"] == "invalid_parameter", (path, answer)


async def test_the_route_takes_the_gap_from_the_settings(data_dir: Path,
                                                         make_client: ClientFactory) -> None:
    await build(data_dir)
    client = await make_client(worker__handlers=("stats",), stats__session_gap_minutes=20.0)
    page = await get(client, "/v1/sessions?player=1")
    assert [s["id"] for s in page["sessions"]] == ["1.3", "1.2", "1.1"]


async def test_posted_matches_make_one_session(make_client: ClientFactory) -> None:
    """Through POST /v1/events and the worker: two matches seconds apart, one session."""
    client = await make_client(worker__handlers=("stats",))
    lines: list[tuple[str, str | None, int, int, int]] = [(*ANN, 0, 100, 1),
                                                          (*BOB, 1, 50, 0)]
    body = [update("m1", lines), api("MatchEnded", {"MatchGuid": "m1", "WinnerTeamNum": 0}),
            update("m2", lines), api("MatchEnded", {"MatchGuid": "m2", "WinnerTeamNum": 1})]
    resp = await client.post("/v1/events", json=body)
    assert resp.status == 202
    last = (await resp.json())["last_seq"]
    await drained(client.get, last)
    page = await get(client, "/v1/sessions")
    assert [(s["player"]["name"], s["matches"], s["wins"], s["losses"]) for s in
            page["sessions"]] == [("Bob", 2, 1, 1), ("Ann", 2, 1, 1)]


# -- the command -----------------------------------------------------------------------------


def sessions_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    result = run_cli("sessions", *args, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_the_command_reads_the_data_dir(tmp_path: Path, data_dir: Path) -> None:
    await build(data_dir)
    where = ("--data-dir", str(data_dir))
    code, out, err = sessions_cli(*where, cwd=tmp_path)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["ID", "STARTED", "PLAYER", "MATCHES", "W-L", "STREAK"]
    assert [line.split()[0] for line in lines[1:]] == ORDER
    assert "  2-0  W2" in lines[2]  # Ann's second session

    code, out, err = sessions_cli("1.3", *where, cwd=tmp_path)
    assert (code, err) == (0, "")
    assert "session 1.3  player 1 Ann" in out
    assert "W-L 2-0  streak W2" in out
    assert [line.split()[0] for line in out.splitlines()[-3:]] == ["3", "4", "5"]

    code, out, _ = sessions_cli("--player", "2", "--json", *where, cwd=tmp_path)
    assert code == 0
    assert [s["id"] for s in json.loads(out)["sessions"]] == ["2.3", "2.1"]
    code, out, err = sessions_cli("--limit", "2", *where, cwd=tmp_path)
    assert code == 0
    assert out.splitlines()[-1] == "(more: --before 1.3)"

    code, out, err = sessions_cli("1.2", *where, cwd=tmp_path)
    assert (code, out) == (1, "")
    assert one_line(err) == "collector: error: no session '1.2'"
    code, out, err = sessions_cli("nope", *where, cwd=tmp_path)
    assert code == 1
    assert "not a session id" in one_line(err)


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_the_command_asks_the_daemon(tmp_path: Path, data_dir: Path,
                                           server_process: Any) -> None:
    await build(data_dir)
    local = [sessions_cli(*args, "--data-dir", str(data_dir), cwd=tmp_path)
             for args in ((), ("1.1",))]
    server: ServerProcess = server_process(args=["--handler", "stats"])
    server.start()
    remote = [sessions_cli(*args, "--url", server.url, cwd=tmp_path) for args in ((), ("1.1",))]
    assert remote == local
    assert all(code == 0 for code, _, _ in remote)
    with urllib.request.urlopen(f"{server.url}/v1/sessions/1.1", timeout=10) as resp:
        assert json.loads(resp.read())["wins"] == 1
    code, _, err = sessions_cli("1.2", "--url", server.url, cwd=tmp_path)
    assert code == 1
    assert "HTTP 404" in one_line(err)
