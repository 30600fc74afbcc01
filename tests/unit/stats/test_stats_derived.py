"""Derived statistics end to end: synthetic streams with known answers through the real
HTTP API, queue, worker (runs applied in one transaction) and stats.db.

The figures come out of `/v1/matches/{id}` equal to the engine's (tests/unit/stats/
test_derived.py states them by hand), whether the stream comes in one POST, in small
POSTs, across a daemon killed with SIGKILL, or partly out of order with X-Sequence; an
event that makes the stats handler fail is dead-lettered alone and the rest is applied
once; a stats.db of schema 3 opens with its data and empty derived fields.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from collector.cli.stats import _render_match, _render_player
from collector.jobs import Job
from collector.stats import apply as stats_apply
from collector.stats import formats
from collector.stats.arenas import arena_name
from collector.stats.derived import PLAYER_KEYS, MatchStats, rounded
from collector.stats.schema import MIGRATIONS, STATS_FILE
from collector.stats.store import StatsStore
from tests.support import synthetic
from tests.support.server import ClientFactory, ServerProcess, wait_until
from tests.support.stats import rows
from tests.support.synthetic import BLUE, GHOST, ORANGE
from tests.unit.stats.test_derived import BLUE_STATS, GHOST_STATS, ORANGE_STATS, orange_boost_avg

pytestmark = pytest.mark.both_backends

Client = TestClient[Any, Any]
WAIT_S = 60.0  # a ceiling for "the worker has caught up", never a measured time
BIG = 64 << 20  # one POST of a whole match
POISON = "poison"  # a top-level key the formats ignore; the patched apply fails on it


def body(messages: list[dict[str, Any]]) -> io.BytesIO:
    """A JSON array of events (a stream: aiohttp warns about big bodies in raw bytes)."""
    return io.BytesIO(json.dumps(messages).encode())


async def post(client: Client, messages: list[dict[str, Any]], **headers: str) -> int:
    resp = await client.post("/v1/events", data=body(messages),
                             headers={"Content-Type": "application/json", **headers})
    assert resp.status == 202, await resp.text()
    return int((await resp.json())["last_seq"])


async def get_json(client: Client, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def settled(get: Callable[[str], Any], last_seq: int) -> dict[str, Any]:
    """Wait until every job up to `last_seq` is done or dead; the queue's numbers."""
    deadline = time.monotonic() + WAIT_S
    while True:
        async with get("/v1/queue") as resp:
            q: dict[str, Any] = await resp.json()
        if q["last_seq"] >= last_seq and q["pending"] == 0 and q["in_flight"] == 0:
            return q
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not catch up: {q}")
        await asyncio.sleep(0.02)


async def the_match(get: Callable[[str], Any]) -> dict[str, Any]:
    async with get("/v1/matches") as resp:
        (summary,) = (await resp.json())["matches"]
    async with get(f"/v1/matches/{summary['id']}") as resp:
        match: dict[str, Any] = await resp.json()
    return match


def figures(match: dict[str, Any]) -> dict[str, Any]:
    """What the derived statistics say about a match: per player, per team, duration."""
    return {
        "players": {p["primary_id"]: p["stats"] for p in match["players"]},
        "teams": {t["num"]: t["possession_s"] for t in match["teams"]},
        "duration_s": match["duration_s"],
    }


def engine_figures(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The engine fed the messages directly, rounded as stored."""
    engine = MatchStats()
    for message in messages:
        engine.feed(formats.parse(message))
    engine.close()
    return {
        "players": {key: rounded(stats) for key, stats in engine.players().items()},
        "teams": {num: round(team["possession_s"], 2) for num, team in engine.teams().items()},
        "duration_s": round(engine.duration_s, 2),
    }


def close_to(got: dict[str, Any], expected: dict[str, Any], rel: float) -> list[str]:
    """Where two figures differ by more than `rel` (None only equals None)."""
    wrong = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(b, dict):
            assert isinstance(a, dict), (path, a)
            assert set(a) == set(b), (path, a, b)
            for key in b:
                walk(f"{path}.{key}", a[key], b[key])
        elif a is None or b is None:
            if a is not b:
                wrong.append(f"{path}: {a!r} != {b!r}")
        elif abs(a - b) > max(rel * abs(b), 0.051):  # rounded to 0.01 or 0.1
            wrong.append(f"{path}: {a!r} != {b!r}")

    walk("", got, expected)
    return wrong


# -- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [30, 60])
async def test_the_scripted_match_through_the_api_gives_the_figures_worked_out_by_hand(
        make_client: ClientFactory, rate: int) -> None:
    client = await make_client(worker__handlers=("stats",), server__max_body_bytes=BIG)
    last = await post(client, synthetic.scripted_match(rate))
    await settled(client.get, last)
    match = await the_match(client.get)
    players = {p["primary_id"]: p["stats"] for p in match["players"]}
    expected = {BLUE.primary_id: BLUE_STATS,
                ORANGE.primary_id: ORANGE_STATS | {"boost_avg": orange_boost_avg(rate)},
                GHOST.primary_id: GHOST_STATS}
    for key, stats in expected.items():
        assert tuple(players[key]) == PLAYER_KEYS  # every key of the contract
        assert close_to(players[key], dict(stats), rel=0.0) == [], key
    assert {t["num"]: t["possession_s"] for t in match["teams"]} == {0: 5.0, 1: 5.5}
    assert match["duration_s"] == 11.5
    assert (match["arena"], match["arena_name"]) == ("Stadium_P", "DFH Stadium")
    assert (match["end_reason"], match["winner"]) == ("ended", 1)

    # The player's document: their stats over their matches, and each recent match's.
    blue = next(p for p in match["players"] if p["primary_id"] == BLUE.primary_id)
    player = await get_json(client, f"/v1/players/{blue['player_id']}")
    assert player["stats"] == blue["stats"]  # one match: the aggregate is the match
    assert player["recent_matches"][0]["stats"] == blue["stats"]
    page = await get_json(client, "/v1/players")
    listed = next(p for p in page["players"] if p["id"] == blue["player_id"])
    assert listed["stats"]["boost_avg"] == blue["stats"]["boost_avg"]


async def test_a_match_without_ticks_has_all_null_stats(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    last = await post(client, [{"event": "player_scores", "player_scores": [
        {"player_name": "Solo", "player_score": 100, "player_goals": 1}]}])
    await settled(client.get, last)
    match = await the_match(client.get)
    (solo,) = match["players"]
    assert solo["stats"]["tracked_s"] is None
    assert tuple(solo["stats"]) == PLAYER_KEYS
    assert all(solo["stats"][k] is None for k in PLAYER_KEYS if not k.startswith("demos"))


# -- the same figures however the stream arrives ------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> list[dict[str, Any]]:
    """About 100 s of play at 30 Hz with goals and demolitions (3,900 messages)."""
    return synthetic.long_match(30, rounds=10)


@pytest.fixture(scope="module")
def expected(stream: list[dict[str, Any]]) -> dict[str, Any]:
    return engine_figures(stream)


async def test_one_big_post_and_small_posts_give_the_engines_figures_exactly(
        make_client: ClientFactory, stream: list[dict[str, Any]], expected: dict[str, Any],
        tmp_path: Path) -> None:
    at_once = await make_client(server__data_dir=tmp_path / "once", server__max_body_bytes=BIG,
                                worker__handlers=("stats",))
    await settled(at_once.get, await post(at_once, stream))
    assert figures(await the_match(at_once.get)) == expected

    paced = await make_client(server__data_dir=tmp_path / "paced", worker__handlers=("stats",))
    last = 0
    for start in range(0, len(stream), 25):
        last = await post(paced, stream[start:start + 25])
        if start % 1000 == 0:
            await asyncio.sleep(0.01)  # let the worker take short runs too
    await settled(paced.get, last)
    assert figures(await the_match(paced.get)) == expected


@pytest.mark.slow
async def test_a_daemon_killed_with_sigkill_mid_match_gives_the_same_figures(
        server_process: Callable[..., ServerProcess], stream: list[dict[str, Any]],
        expected: dict[str, Any]) -> None:
    server = server_process(args=["--handler", "stats"],
                            env={"COLLECTOR_SERVER_MAX_BODY_BYTES": str(BIG)})
    server.start()
    half = len(stream) // 2
    connector = aiohttp.TCPConnector(force_close=True)  # no connection to a dead process
    async with aiohttp.ClientSession(server.url, connector=connector) as http:
        headers = {"Content-Type": "application/json"}
        for part in (stream[:half // 2], stream[half // 2:half]):
            async with http.post("/v1/events", data=body(part), headers=headers) as resp:
                assert resp.status == 202
        # Killed with the second part on disk and the worker in the middle of it.
        await wait_until(lambda: processed(server) > half // 2, timeout=WAIT_S,
                         what="the worker inside the second part")
        server.kill()
        assert half // 2 < processed(server) < half  # killed in the middle of the part
        server.start()
        async with http.post("/v1/events", data=body(stream[half:]), headers=headers) as resp:
            assert resp.status == 202
            last = (await resp.json())["last_seq"]
        await settled(http.get, last)
        got = figures(await the_match(http.get))
    assert server.terminate() == 0
    assert got == expected


def processed(server: ServerProcess) -> int:
    """How far the worker got, from the stats database's own mark (read-only)."""
    path = server.data_dir / STATS_FILE
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT last_seq FROM applied").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def batches(stream: list[dict[str, Any]], size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for start in range(0, len(stream), size):
        yield start, stream[start:start + size]


async def test_batches_out_of_order_with_x_sequence_stay_within_one_percent(
        make_client: ClientFactory, stream: list[dict[str, Any]],
        expected: dict[str, Any]) -> None:
    client = await make_client(worker__handlers=("stats",))
    parts = list(batches(stream, 10))
    # As a plugin with requests in flight delivers them: now and then the newer of two
    # batches first (its older one then comes late, and its ticks are skipped as stale).
    for i in range(100, len(parts) - 1, 97):
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    last = 0
    for start, part in parts:
        last = max(last, await post(client, part, **{"X-Source": "bridge",
                                                      "X-Sequence": str(start)}))
    await settled(client.get, last)
    got = figures(await the_match(client.get))
    assert close_to(got, expected, rel=0.01) == []
    assert (await get_json(client, "/v1/stats"))["stale_skipped"] > 0


# -- the batch path under failures -------------------------------------------------------------


async def test_an_event_that_fails_is_dead_lettered_alone_and_the_rest_applied_once(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = synthetic.scripted_match(30)
    poisoned = 400  # an UpdateState in live play
    assert messages[poisoned]["Event"] == "UpdateState"
    messages[poisoned] = {**messages[poisoned], POISON: True}
    real_parse = formats.parse

    def parse(payload: object) -> formats.Event:
        # Every event is parsed, whatever path it then takes (a snapshot whose scoreboard
        # did not change skips the tables): the failure cannot be stepped around.
        if isinstance(payload, dict) and POISON in payload:
            raise RuntimeError("this event breaks the stats handler")
        return real_parse(payload)

    monkeypatch.setattr(formats, "parse", parse)
    client = await make_client(worker__handlers=("stats",), worker__max_attempts=2,
                               worker__backoff_base=0.01, worker__backoff_cap=0.02,
                               server__max_body_bytes=BIG)
    last = await post(client, messages)  # all waiting at once: the worker takes runs
    q = await settled(client.get, last)
    assert q["dead"] == 1
    dead = await get_json(client, "/v1/dead")
    assert [d["seq"] for d in dead["dead"]] == [poisoned + 1]
    # Every other event applied once: the engine's figures without the poisoned tick.
    expected = engine_figures(messages[:poisoned] + messages[poisoned + 1:])
    assert figures(await the_match(client.get)) == expected
    counters = await get_json(client, "/v1/stats")
    assert counters["replayed"] == 0
    assert counters["applied"] + counters["unchanged"] + counters["bogus_goals"] \
        == len(messages) - 1


async def test_a_run_that_fails_keeps_nothing_and_the_single_path_gives_the_same_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = synthetic.scripted_match(30)
    jobs = [Job(seq=i + 1, payload=m, received_at=1e9 + i) for i, m in enumerate(messages)]
    store = StatsStore(tmp_path / "data", durability="normal")
    await store.open()
    try:
        await store.apply_run(jobs[:300])
        before = await store.match(1)
        real_run = stats_apply.Apply.run
        fail_at = jobs[450].seq

        def run(self: stats_apply.Apply, event: formats.Event) -> stats_apply.Outcome:
            if self.job.seq == fail_at:
                raise RuntimeError("boom")
            return real_run(self, event)

        monkeypatch.setattr(stats_apply.Apply, "run", run)
        with pytest.raises(RuntimeError, match="boom"):
            await store.apply_run(jobs[300:600])
        assert await store.match(1) == before  # nothing of the run was kept
        monkeypatch.setattr(stats_apply.Apply, "run", real_run)
        for job in jobs[300:600]:  # what the worker does next: one by one
            await store.apply(job)
        await store.apply_run(jobs[600:])
        match = await store.match(1)
        assert match is not None
        assert figures(match) == engine_figures(messages)
        # A replay of everything (kill -9 before the queue's acks) changes nothing.
        await store.apply_run(jobs)
        assert await store.match(1) == match
    finally:
        await store.close()


# -- migrations --------------------------------------------------------------------------------


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_schema_3_stats_db_opens_with_its_data_and_empty_derived_fields(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / STATS_FILE)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:3]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (3)")
    conn.execute("INSERT INTO matches (id, guid, feed, offline, arena, started_at, ended_at, "
                 "opened_seq, opened_pos) VALUES (1, 'OLD', '', 0, 'cs_p', 100.0, 400.0, 1, 1)")
    conn.execute("INSERT INTO match_teams VALUES (1, 0, 'Blue', 2)")
    conn.execute("INSERT INTO players (id, key, name, last_seq, matches, goals) "
                 "VALUES (1, 'name:Old', 'Old', 1, 1, 2)")
    conn.execute("INSERT INTO match_players (match_id, player_id, name, team, score, goals, "
                 "updated_seq) VALUES (1, 1, 'Old', 0, 300, 2, 1)")
    conn.execute("UPDATE applied SET last_seq = 1")
    conn.commit()
    conn.close()

    store = StatsStore(data_dir)
    await store.open()
    try:
        match = await store.match(1)
        assert match is not None
        assert (match["guid"], match["arena_name"], match["duration_s"]) == \
            ("OLD", "Champions Field", None)
        assert match["last_event_at"] == 400.0  # ended_at, else started_at
        assert match["teams"] == [{"num": 0, "name": "Blue", "score": 2, "possession_s": None,
                                   "color_primary": None, "color_secondary": None}]
        (old,) = match["players"]
        assert (old["name"], old["score"], old["goals"]) == ("Old", 300, 2)
        assert old["stats"] == dict.fromkeys(PLAYER_KEYS)
        player = await store.player(1)
        assert player is not None
        assert player["stats"] == dict.fromkeys(PLAYER_KEYS)
        # And it takes new matches with their figures.
        messages = synthetic.scripted_match(30)
        await store.apply_run([Job(seq=2 + i, payload=m, received_at=1e9 + i)
                               for i, m in enumerate(messages)])
        new = await store.match(synthetic.GUID)
        assert new is not None
        assert figures(new) == engine_figures(messages)
    finally:
        await store.close()


# -- match facts: arena names, idle matches ----------------------------------------------------


def test_arena_codes_have_their_display_names_whatever_their_case() -> None:
    assert arena_name("cs_p") == "Champions Field"
    assert arena_name("Stadium_P") == "DFH Stadium"
    assert arena_name("EuroStadium_Night_P") == "Mannfield (Night)"
    assert arena_name("STADIUM_P") == "DFH Stadium"
    assert arena_name("Mystery_P") == "Mystery_P"  # unknown: as it came
    assert arena_name(None) is None


async def test_a_match_that_goes_quiet_is_closed_at_its_last_event(
        make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",), stats__idle_close_minutes=0.01,
                               server__max_body_bytes=BIG)
    messages = synthetic.scripted_match(30)
    ended = next(i for i, m in enumerate(messages) if m["Event"] == "MatchEnded")
    await settled(client.get, await post(client, messages[:ended]))  # no end event

    async def closed() -> bool:
        return bool((await the_match(client.get))["end_reason"] == "idle")

    await wait_until(closed, timeout=WAIT_S, what="the quiet match closed")
    match = await the_match(client.get)
    assert match["ended_at"] == match["last_event_at"]
    assert match["duration_s"] == 11.5  # the engine was closed: its last second counted
    # A new offline stream after it opens a new match rather than joining the closed one.
    fresh = [{**m, "Data": m["Data"].replace(synthetic.GUID, "")} for m in messages[:200]]
    await settled(client.get, await post(client, fresh))
    page = await get_json(client, "/v1/matches")
    assert len(page["matches"]) == 2


# -- the CLI ------------------------------------------------------------------------------------


def test_collector_matches_id_shows_boost_and_movement_next_to_the_scoreboard() -> None:
    stats = rounded(engine_figures(synthetic.scripted_match(30))["players"][BLUE.primary_id])
    match = {"id": 1, "guid": "G", "arena": "cs_p", "arena_name": "Champions Field",
             "duration_s": 11.5, "teams": [{"num": 0, "name": "Blue", "score": 0,
                                             "possession_s": 5.0}],
             "players": [{"name": "Blue One", "team": 0, "score": 10, "stats": stats},
                         {"name": "Ghost", "team": 0, "score": 0,
                          "stats": dict.fromkeys(PLAYER_KEYS)}],
             "goals": []}
    text = "\n".join(_render_match(match))
    assert "Champions Field" in text
    assert "11.5" in text
    assert "BPM" in text
    assert "SUPERSONIC" in text
    assert "34.5" in text
    ghost = next(line for line in text.splitlines() if line.startswith("Ghost"))
    assert "-" in ghost
    player = {"id": 1, "name": "Blue One", "matches": 1, "wins": 0, "goals": 0,
              "assists": 0, "saves": 0, "shots": 0, "score": 10, "stats": stats,
              "recent_matches": []}
    assert "boost avg 34.5" in "\n".join(_render_player(player))


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_run_writes_each_engine_once_not_once_per_event(tmp_path: Path) -> None:
    messages = synthetic.scripted_match(30)
    jobs = [Job(seq=i + 1, payload=m, received_at=1e9 + i) for i, m in enumerate(messages)]
    store = StatsStore(tmp_path / "data", durability="normal")
    await store.open()
    statements: list[str] = []
    try:
        conn = store._require().conn
        assert isinstance(conn, sqlite3.Connection)
        await store._run(conn.set_trace_callback, statements.append)
        await store.apply_run(jobs[:400])
        await store._run(conn.set_trace_callback, None)
    finally:
        await store.close()
    assert sum("INSERT INTO match_engine" in s for s in statements) == 1
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    assert sum("UPDATE applied" in s for s in statements) == 1


def _jobs_of_two_feeds(messages: list[dict[str, Any]]) -> list[Job]:
    """The match as two bridges would send it (the same messages, X-Source a and b, each
    numbered), interleaved, with a few of b's arriving late (out of order)."""
    jobs: list[Job] = []
    seq = 0
    for index, message in enumerate(messages):
        for source in ("a", "b"):
            seq += 1
            sequence = index + 1
            if source == "b" and index % 97 == 5:
                sequence -= 3  # older than what b already sent: stale
            jobs.append(Job(seq=seq, payload=message, received_at=1e9 + index / 30,
                            source=source, sequence=sequence))
    return jobs


async def test_a_run_gives_exactly_what_the_jobs_one_by_one_give(tmp_path: Path) -> None:
    """The run path skips the tables for a snapshot whose scoreboard its feed just wrote;
    its outcomes, marks, figures and rows must be the single path's, job for job, and
    its committed state at every run's end the same as the single path's there."""
    messages = synthetic.scripted_match(30)
    jobs = _jobs_of_two_feeds(messages)
    size = 256
    results = []
    for name, run in (("singles", 1), ("runs", size)):
        store = StatsStore(tmp_path / name, durability="normal")
        await store.open()
        marks: list[list[tuple[str, int]]] = []
        try:
            outcomes: list[str] = []
            for start in range(0, len(jobs), run):
                chunk = jobs[start:start + run]
                if run == 1:
                    outcomes.append(await store.apply(chunk[0]))
                else:
                    outcomes += await store.apply_run(chunk)
                if (start + run) % size == 0 or start + run >= len(jobs):
                    marks.append(await _feed_marks(store))
            match = await store.match(synthetic.GUID)
        finally:
            await store.close()
        results.append((outcomes, match, marks))
    (single_outcomes, single_match, single_marks), (run_outcomes, run_match, run_marks) = results
    assert run_outcomes == single_outcomes
    assert "stale" in run_outcomes  # the late ones were seen as late on both paths
    assert run_marks == single_marks  # the X-Sequence marks committed at each run's end
    assert run_marks[-1] == [("a", len(messages)), ("b", len(messages))]
    assert run_match == single_match


async def _feed_marks(store: StatsStore) -> list[tuple[str, int]]:
    """Each feed's committed X-Sequence mark."""
    return [(str(f), int(h)) for f, h in
            await rows(store, "SELECT feed, high_sequence FROM feeds ORDER BY feed")]


def _wire(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"Event": event, "Data": data}


def _snap(guid: str) -> dict[str, Any]:
    return _wire("UpdateState", {
        "MatchGuid": guid,
        "Game": {"Arena": "Stadium_P", "TimeSeconds": 100,
                 "Teams": [{"TeamNum": 0, "Name": "Blue", "Score": 0},
                           {"TeamNum": 1, "Name": "Orange", "Score": 0}]},
        "Players": [{"Name": "A", "PrimaryId": "Steam|1|0", "TeamNum": 0, "Score": 10,
                     "Boost": 50, "Speed": 100, "bHasCar": True, "bOnGround": True}]})


_GUID = "ABCDEF0123456789"
_BETWEEN_TWO_SAME_SNAPSHOTS: dict[str, tuple[list[dict[str, Any]], list[int] | None]] = {
    "a goal moves the mark past the second snapshot": (
        [_snap(_GUID), _wire("GoalScored", {"MatchGuid": _GUID, "GoalTime": 10,
                                            "Scorer": {"Name": "A", "TeamNum": 0}}),
         _snap(_GUID)], [10, 20, 15]),
    "an offline match destroyed": ([_snap(""), _wire("MatchDestroyed", {}), _snap("")], None),
    "an offline match created": ([_snap(""), _wire("MatchCreated", {}), _snap("")], None),
    "a match ended": ([_snap(_GUID), _wire("MatchEnded", {"MatchGuid": _GUID,
                                                          "WinnerTeamNum": 1}),
                       _snap(_GUID)], None),
}


@pytest.mark.parametrize("case", list(_BETWEEN_TWO_SAME_SNAPSHOTS))
async def test_an_event_between_two_same_snapshots_counts_in_a_run_too(
    tmp_path: Path, case: str
) -> None:
    """A goal, a start or an end between two snapshots with the same scoreboard: the run
    path (which skips the tables for an unchanged scoreboard) gives the single path's
    matches, lines, careers, marks and counts."""
    messages, sequences = _BETWEEN_TWO_SAME_SNAPSHOTS[case]
    results = []
    for name in ("run", "singles"):
        jobs = [Job(i + 1, m, 1000.0 + i, 1, "feed", None if sequences is None else sequences[i])
                for i, m in enumerate(messages)]
        store = StatsStore(tmp_path / name, durability="normal")
        await store.open()
        try:
            if name == "run":
                await store.apply_run(jobs)
            else:
                for job in jobs:
                    await store.apply(job)
            counts = (store.counters.applied, store.counters.unchanged,
                      store.counters.stale_skipped)
            tables = [await rows(store, sql) for sql in (
                "SELECT id, guid, ended_at IS NOT NULL, end_reason FROM matches ORDER BY id",
                "SELECT match_id, player_id, score, stats FROM match_players ORDER BY 1, 2",
                "SELECT feed, current_match, high_sequence FROM feeds",
                "SELECT id, matches, score FROM players ORDER BY id")]
        finally:
            await store.close()
        results.append((tables, counts))
    assert results[0] == results[1]
