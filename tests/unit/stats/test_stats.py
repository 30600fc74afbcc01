"""The stats store on a real SQLite file: exactly once, stale skipping, matches, careers."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from collector.errors import StartupError
from collector.jobs import Job
from collector.stats.schema import SCHEMA_VERSION, STATS_FILE
from collector.stats.store import StatsStore
from tests.support.paths import CAPTURE_JSONL
from tests.support.stats import GUID, api, rows, update

pytestmark = pytest.mark.both_backends

T0 = 1_790_000_000.0


def capture() -> list[dict[str, Any]]:
    """The recording's 438 messages, as the game sent them."""
    return [json.loads(line) for line in CAPTURE_JSONL.read_text().splitlines()]


def jobs(payloads: Iterable[Any], *, first_seq: int = 1, source: str | None = None,
         first_sequence: int | None = None) -> list[Job]:
    """Jobs as the queue hands them out: seq (and X-Sequence, if given) counting up."""
    return [
        Job(seq=first_seq + i, payload=p, received_at=T0 + i, source=source,
            sequence=None if first_sequence is None else first_sequence + i)
        for i, p in enumerate(payloads)
    ]






def goal(guid: str, scorer: str, team: int, *, speed: float = 80.0, time: float = 30.0,
         assister: str = "") -> dict[str, Any]:
    return api("GoalScored", {"MatchGuid": guid, "GoalSpeed": speed, "GoalTime": time,
                              "Scorer": {"Name": scorer, "TeamNum": team},
                              "Assister": {"Name": assister}})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StatsStore]:
    s = StatsStore(tmp_path / "data")
    await s.open()
    yield s
    await s.close()


async def apply_all(store: StatsStore, items: Iterable[Job]) -> list[str]:
    return [await store.apply(job) for job in items]


async def only_match(store: StatsStore) -> dict[str, Any]:
    page = await store.matches_page()
    assert len(page["matches"]) == 1, page
    match = await store.match(page["matches"][0]["id"])
    assert match is not None
    return match


def lines(match: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """name -> (team, score, goals) of a match's player lines."""
    return {p["name"]: (p["team"], p["score"], p["goals"]) for p in match["players"]}


async def careers(store: StatsStore) -> dict[str, tuple[int, int, int]]:
    """name -> (matches, goals, score) from the players list."""
    page = await store.players_page(limit=100)
    return {p["name"]: (p["matches"], p["goals"], p["score"]) for p in page["players"]}


async def sums_over_matches(store: StatsStore) -> dict[str, tuple[int, int, int]]:
    """What careers must equal: per player, the sum of their latest line in each match."""
    found = await rows(
        store, "SELECT p.name, count(*), sum(mp.goals), sum(mp.score) FROM match_players mp "
        "JOIN players p ON p.id = mp.player_id GROUP BY p.id")
    return {name: (int(n), int(g), int(s)) for name, n, g, s in found}


async def test_the_recording_gives_the_score_and_lines_its_readme_states(
        store: StatsStore) -> None:
    await apply_all(store, jobs(capture()))
    match = await only_match(store)
    assert match["guid"] == GUID
    assert match["arena"] == "cs_p"
    assert [{k: t[k] for k in ("num", "name", "score")} for t in match["teams"]] == [
                              {"num": 0, "name": "Blue", "score": 0},
                              {"num": 1, "name": "Orange", "score": 1}]
    assert lines(match) == {"Zone Killa": (1, 326, 1), "nickm": (0, 0, 0)}
    assert match["goals"] == []  # the recording starts after the goal
    assert await careers(store) == {"Zone Killa": (1, 1, 326), "nickm": (1, 0, 0)}


async def test_each_job_is_applied_once_even_when_run_again(tmp_path: Path,
                                                            store: StatsStore) -> None:
    items = jobs([update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0)),
                  goal(GUID, "A", 0),
                  update(GUID, [("A", "Steam|1|0", 0, 250, 2)], (2, 0)),
                  goal(GUID, "A", 0, time=55.0)])
    assert await apply_all(store, items) == ["applied"] * 4
    before = (await only_match(store), await careers(store))
    # The same jobs again, as after a crash between "handler started" and "acknowledged".
    assert await apply_all(store, items) == ["replayed"] * 4
    assert (await only_match(store), await careers(store)) == before
    # And after a restart of the store: last_seq is on disk with the changes.
    await store.close()
    again = StatsStore(tmp_path / "data")
    await again.open()
    try:
        assert await apply_all(again, items[2:]) == ["replayed", "replayed"]
        match = await only_match(again)
        assert len(match["goals"]) == 2
        assert await careers(again) == {"A": (1, 2, 250)}
    finally:
        await again.close()


async def test_a_dead_letter_put_back_in_place_adds_its_facts_not_its_stale_state(
        store: StatsStore) -> None:
    """Seq 2 was dead-lettered before its effect was stored, then retried in its old place
    after seq 3 and 4 were applied: its goal counts, its older snapshot does not."""
    old_state = update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0))
    items = jobs([update(GUID, [("A", "Steam|1|0", 0, 50, 0)]), goal(GUID, "A", 0),
                  update(GUID, [("A", "Steam|1|0", 0, 300, 2)], (2, 0)),
                  goal(GUID, "A", 0, time=55.0)])
    assert await apply_all(store, [items[0], items[2], items[3]]) == ["applied"] * 3
    revived = [items[1], Job(seq=2, payload=old_state, received_at=T0)]
    assert await apply_all(store, revived) == ["applied", "replayed"]
    match = await only_match(store)
    assert sorted(g["game_time"] for g in match["goals"]) == [30.0, 55.0]
    assert lines(match) == {"A": (0, 300, 2)}
    assert store.counters.stale_skipped == 0  # counted only when first seen


async def test_the_same_goal_under_another_seq_is_stored_once(store: StatsStore) -> None:
    """E.g. a dead letter put back at the tail (a new seq), or two feeds of one match."""
    same = goal(GUID, "A", 0, speed=77.7, time=12.0)
    assert await apply_all(store, jobs([same, same])) == ["applied", "unchanged"]
    assert len((await only_match(store))["goals"]) == 1


async def test_careers_are_sums_of_latest_lines_when_snapshots_repeat(
        tmp_path: Path, store: StatsStore) -> None:
    first = [update("M1", [("A", "Steam|1|0", 0, s, g), ("B", "Steam|2|0", 1, 50, 0)])
             for s, g in [(0, 0), (100, 1), (100, 1), (100, 1), (220, 2), (220, 2)]]
    second = [update("M2", [("A", "Steam|1|0", 1, s, g)]) for s, g in [(10, 0), (130, 1)] * 3]
    # The same cumulative snapshot sent many times must not add up.
    await apply_all(store, jobs(first + first[-1:] * 5 + second))
    assert await careers(store) == {"A": (2, 3, 350), "B": (1, 0, 50)}
    assert await sums_over_matches(store) == await careers(store)


async def test_stale_updates_are_skipped_and_counted(tmp_path: Path, store: StatsStore) -> None:
    newer = Job(seq=1, payload=update(GUID, [("A", "Steam|1|0", 0, 300, 3)], (3, 0)),
                received_at=T0, source="bridge", sequence=10)
    older = Job(seq=2, payload=update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0)),
                received_at=T0, source="bridge", sequence=7)
    other = Job(seq=3, payload=update(GUID, [("A", "Steam|1|0", 0, 320, 3)], (3, 0)),
                received_at=T0, source="bridge", sequence=11)
    assert await apply_all(store, [newer, older, other]) == ["applied", "stale", "applied"]
    match = await only_match(store)
    assert lines(match) == {"A": (0, 320, 3)}
    assert match["teams"][0]["score"] == 3
    assert store.counters.stale_skipped == 1
    await store.close()
    again = StatsStore(tmp_path / "data")  # the count is kept on disk
    await again.open()
    assert again.counters.stale_skipped == 1
    await again.close()


async def test_late_facts_of_a_named_match_still_count(store: StatsStore) -> None:
    """A goal that arrives after a newer snapshot is not stale: nothing supersedes it."""
    snap = Job(seq=1, payload=update(GUID, [("A", "Steam|1|0", 0, 300, 1)], (1, 0)),
               received_at=T0, source="s", sequence=5)
    late_goal = Job(seq=2, payload=goal(GUID, "A", 0), received_at=T0, source="s", sequence=4)
    late_start = Job(seq=3, payload=api("MatchCreated", {"MatchGuid": ""}), received_at=T0,
                     source="s", sequence=3)
    assert await apply_all(store, [snap, late_goal, late_start]) == \
        ["applied", "applied", "stale"]
    match = await only_match(store)  # the late unnamed start opened no match
    assert [g["scorer"] for g in match["goals"]] == ["A"]


async def test_the_2023_plugin_timestamp_orders_its_snapshots(store: StatsStore) -> None:
    def snapshot(ts: int, goals: int) -> dict[str, Any]:
        return {"event": "online_game", "match_id": "M-9", "last_update_timestamp": ts,
                "roster": [{"name": "A", "team_num": 0, "score": goals * 100, "goals": goals,
                            "saves": 0, "assists": 0, "shots": goals}]}

    outcomes = await apply_all(store, jobs([snapshot(100, 1), snapshot(102, 3),
                                            snapshot(101, 2)]))
    assert outcomes == ["applied", "applied", "stale"]
    assert lines(await only_match(store)) == {"A": (0, 300, 3)}


async def test_the_bogus_goal_after_a_replay_is_ignored(store: StatsStore) -> None:
    bogus = api("GoalScored", {"MatchGuid": GUID, "GoalSpeed": 0, "GoalTime": 0,
                               "Scorer": {"Name": "", "TeamNum": 255}})
    outcomes = await apply_all(store, jobs([
        api("MatchCreated", {"MatchGuid": GUID}),
        goal(GUID, "A", 0, assister="B"),
        api("GoalReplayEnd", {"MatchGuid": GUID}),
        bogus,
    ]))
    assert outcomes == ["applied", "applied", "unchanged", "ignored"]
    match = await only_match(store)
    assert [(g["scorer"], g["assister"], g["speed"]) for g in match["goals"]] == \
        [("A", "B", 80.0)]
    assert store.counters.bogus_goals == 1


async def test_match_destroyed_without_match_ended_closes_the_match(store: StatsStore) -> None:
    await apply_all(store, jobs([
        api("MatchCreated", {"MatchGuid": GUID}),
        update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0)),
        api("MatchDestroyed", {"MatchGuid": GUID}),
    ]))
    match = await only_match(store)
    assert match["ended_at"] == T0 + 2
    assert match["end_reason"] == "destroyed"
    assert match["winner"] is None


async def test_match_ended_sets_the_winner_and_destroyed_keeps_it(store: StatsStore) -> None:
    await apply_all(store, jobs([
        update(GUID, [("A", "Steam|1|0", 0, 100, 1)], (1, 0)),
        api("MatchEnded", {"MatchGuid": GUID, "WinnerTeamNum": 0}),
        update(GUID, [("A", "Steam|1|0", 0, 150, 1)], (1, 0)),  # the podium
        api("MatchDestroyed", {"MatchGuid": GUID}),
    ]))
    match = await only_match(store)
    assert (match["winner"], match["end_reason"], match["ended_at"]) == (0, "ended", T0 + 1)
    assert lines(match) == {"A": (0, 150, 1)}
    page = await store.players_page()
    assert page["players"][0]["wins"] == 1


def offline_match(bot_goals: int, first_goal_speed: float) -> list[dict[str, Any]]:
    """One offline match against a bot, with every lifecycle event the game sends."""
    me = ("Me", "Steam|42|0", 0)
    return [
        api("MatchCreated", {"MatchGuid": ""}),
        api("MatchInitialized", {"MatchGuid": ""}),
        update("", [(*me, 0, 0), ("Armstrong", None, 1, 0, 0)]),
        goal("", "Me", 0, speed=first_goal_speed),
        update("", [(*me, 100, 1), ("Armstrong", None, 1, 50 * bot_goals, bot_goals)],
               (1, bot_goals)),
        api("MatchEnded", {"MatchGuid": "", "WinnerTeamNum": 0 if bot_goals < 1 else 1}),
        api("MatchDestroyed", {"MatchGuid": ""}),
    ]


async def test_two_offline_matches_stay_separate(store: StatsStore) -> None:
    await apply_all(store, jobs(offline_match(0, 70.0) + offline_match(2, 90.0)))
    page = await store.matches_page()
    assert [m["guid"] for m in page["matches"]] == ["offline:-:8", "offline:-:1"]
    second, first = [await store.match(m["id"]) for m in page["matches"]]
    assert first is not None
    assert second is not None
    assert lines(first) == {"Me": (0, 100, 1), "Armstrong": (1, 0, 0)}
    assert lines(second) == {"Me": (0, 100, 1), "Armstrong": (1, 100, 2)}
    assert [g["speed"] for g in first["goals"]] == [70.0]
    assert [g["speed"] for g in second["goals"]] == [90.0]
    assert (first["winner"], second["winner"]) == (0, 1)
    assert (await careers(store))["Me"] == (2, 2, 200)


async def test_offline_matches_without_start_events_split_when_numbers_go_down(
        store: StatsStore) -> None:
    snaps = [update("", [("Me", "Steam|42|0", 0, s, g)]) for s, g in
             [(0, 0), (100, 1), (300, 2), (0, 0), (50, 0)]]
    await apply_all(store, jobs(snaps, source="pc"))
    page = await store.matches_page()
    assert [m["guid"] for m in page["matches"]] == ["offline:pc:4", "offline:pc:1"]
    assert page["matches"][1]["end_reason"] == "superseded"
    assert (await careers(store))["Me"] == (2, 2, 350)


async def test_sos_messages_land_in_the_same_tables(store: StatsStore) -> None:
    def sos_state(score: int, goals: int) -> dict[str, Any]:
        return {"event": "game:update_state", "data": {
            "match_guid": "SOS1", "hasGame": True,
            "game": {"arena": "Stadium_P", "teams": [{"name": "BLUE", "score": goals},
                                                     {"name": "ORANGE", "score": 0}],
                     "time_seconds": 200, "isOT": False, "hasWinner": False, "winner": ""},
            "players": {"Alpha_1": {"name": "Alpha", "primaryID": "Steam|7|0", "team": 0,
                                    "score": score, "goals": goals, "shots": goals,
                                    "assists": 0, "saves": 0, "touches": 5, "demos": 0}}}}

    await apply_all(store, jobs([
        {"event": "game:match_created", "data": "game_match_created"},
        sos_state(0, 0),
        {"event": "game:goal_scored", "data": {
            "goalspeed": 101.0, "goaltime": 12.0, "scorer": {"name": "Alpha", "teamnum": 0},
            "assister": {"name": ""}}},
        sos_state(120, 1),
        {"event": "game:match_ended", "data": {"winner_team_num": 0}},
    ], source="overlay"))
    match = await only_match(store)
    assert match["guid"] == "SOS1"  # the start came without an id: the match adopted it
    assert lines(match) == {"Alpha": (0, 120, 1)}
    assert [(g["scorer"], g["scorer_id"], g["speed"]) for g in match["goals"]] == \
        [("Alpha", match["players"][0]["player_id"], 101.0)]
    assert (match["winner"], match["teams"][0]["score"]) == (0, 1)


async def test_plugin_snapshots_land_in_the_same_tables(store: StatsStore) -> None:
    scores = {"event": "player_scores", "player_scores": [
        {"player_name": "Alpha", "player_score": 120, "player_goals": 1, "player_saves": 0,
         "player_assists": 1, "player_shots": 2}]}
    online = {"event": "online_game", "match_id": "M-77", "last_update_timestamp": 5,
              "playlist": "Ranked Doubles",
              "roster": [{"name": "Alpha", "team_num": 1, "score": 40, "goals": 0,
                          "saves": 1, "assists": 0, "shots": 0}]}
    await apply_all(store, jobs([scores, online], source="bakkes"))
    page = await store.matches_page()
    newest, oldest = page["matches"]
    assert (newest["guid"], newest["playlist"]) == ("M-77", "Ranked Doubles")
    assert oldest["guid"] == "offline:bakkes:1"
    assert (await careers(store))["Alpha"] == (2, 1, 160)


async def test_a_snapshot_without_players_or_teams_opens_no_match(store: StatsStore) -> None:
    empty = api("UpdateState", {"MatchGuid": "", "Players": [], "Game": {"Teams": []}})
    assert await apply_all(store, jobs([empty, empty])) == ["unchanged", "unchanged"]
    assert (await store.matches_page())["matches"] == []


async def test_pages_are_newest_first_with_a_cursor(store: StatsStore) -> None:
    await apply_all(store, jobs([update(f"G{i}", [(f"P{i}", f"Steam|{i}|0", 0, i, 0)])
                                 for i in range(5)]))
    first = await store.matches_page(limit=2)
    assert [m["guid"] for m in first["matches"]] == ["G4", "G3"]
    second = await store.matches_page(limit=2, before=int(first["next"]))
    third = await store.matches_page(limit=2, before=int(second["next"]))
    assert [m["guid"] for m in second["matches"] + third["matches"]] == ["G2", "G1", "G0"]
    assert third["next"] is None
    players = await store.players_page(limit=3)
    assert [p["name"] for p in players["players"]] == ["P4", "P3", "P2"]


async def test_the_same_events_in_any_order_with_sequences_end_in_the_same_state(
        tmp_path: Path) -> None:
    messages = capture()
    orders = [list(range(len(messages)))]
    orders.append(orders[0][::-1])  # the worst case: the newest first, the oldest last
    orders.append(random.Random(1234).sample(orders[0], len(messages)))
    results = []
    for run, order in enumerate(orders):
        store = StatsStore(tmp_path / f"run{run}", durability="normal")
        await store.open()
        for seq, i in enumerate(order, start=1):
            await store.apply(Job(seq=seq, payload=messages[i], received_at=T0,
                                  source="bridge", sequence=1000 + i))
        match = await only_match(store)
        # The scoreboard: the derived statistics of ticks skipped as stale differ, as they
        # must (tests/unit/stats/test_stats_derived.py checks them out of order).
        results.append(([{k: v for k, v in p.items() if k != "stats"}
                         for p in match["players"]],
                        [{k: v for k, v in t.items() if k != "possession_s"}
                         for t in match["teams"]], await careers(store)))
        await store.close()
    zone = next(p for p in results[0][0] if p["name"] == "Zone Killa")
    assert (zone["score"], zone["goals"], zone["touches"]) == (326, 1, 266)
    assert results[1] == results[0]
    assert results[2] == results[0]


# -- schema migrations -------------------------------------------------------------------------

#: The first released schema, frozen here on purpose: the program must open such a file.
SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE applied (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL);
INSERT INTO applied (id, last_seq) VALUES (1, 0);
CREATE TABLE feeds (feed TEXT PRIMARY KEY, current_match INTEGER, high_sequence INTEGER);
CREATE TABLE matches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT NOT NULL UNIQUE,
    feed TEXT NOT NULL, offline INTEGER NOT NULL, arena TEXT,
    started_at REAL NOT NULL, ended_at REAL, overtime INTEGER NOT NULL DEFAULT 0,
    winner INTEGER, time_seconds INTEGER, opened_seq INTEGER NOT NULL);
CREATE TABLE match_teams (
    match_id INTEGER NOT NULL REFERENCES matches (id), num INTEGER NOT NULL,
    name TEXT, score INTEGER, PRIMARY KEY (match_id, num));
CREATE TABLE players (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL, primary_id TEXT, last_seq INTEGER NOT NULL,
    matches INTEGER NOT NULL DEFAULT 0, score INTEGER NOT NULL DEFAULT 0,
    goals INTEGER NOT NULL DEFAULT 0, shots INTEGER NOT NULL DEFAULT 0,
    assists INTEGER NOT NULL DEFAULT 0, saves INTEGER NOT NULL DEFAULT 0,
    touches INTEGER NOT NULL DEFAULT 0, demos INTEGER NOT NULL DEFAULT 0);
CREATE TABLE match_players (
    match_id INTEGER NOT NULL REFERENCES matches (id),
    player_id INTEGER NOT NULL REFERENCES players (id),
    name TEXT NOT NULL, team INTEGER, score INTEGER, goals INTEGER, shots INTEGER,
    assists INTEGER, saves INTEGER, touches INTEGER, demos INTEGER,
    updated_seq INTEGER NOT NULL, PRIMARY KEY (match_id, player_id));
CREATE TABLE goals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    match_id INTEGER NOT NULL REFERENCES matches (id), seq INTEGER NOT NULL UNIQUE,
    scorer TEXT NOT NULL, scorer_team INTEGER, assister TEXT, speed REAL,
    game_time REAL, received_at REAL NOT NULL);
CREATE INDEX goals_match ON goals (match_id);
-- one match as a v1 program left it
INSERT INTO matches (guid, feed, offline, arena, started_at, opened_seq)
    VALUES ('OLD1', '', 0, 'Park_P', 1700000000.0, 1);
INSERT INTO match_teams VALUES (1, 0, 'Blue', 2), (1, 1, 'Orange', 1);
INSERT INTO players (key, name, primary_id, last_seq, matches, score, goals)
    VALUES ('Steam|1|0', 'A', 'Steam|1|0', 3, 1, 400, 2);
INSERT INTO match_players VALUES (1, 1, 'A', 0, 400, 2, 3, 0, 1, 30, 0, 3);
INSERT INTO goals (match_id, seq, scorer, scorer_team, speed, game_time, received_at)
    VALUES (1, 2, 'A', 0, 88.0, 40.0, 1700000040.0);
UPDATE applied SET last_seq = 3;
INSERT INTO feeds VALUES ('', 1, NULL);
"""


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_v1_database_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / STATS_FILE) as conn:
        conn.executescript(SCHEMA_V1)
    conn.close()
    store = StatsStore(data)
    await store.open()
    try:
        match = await store.match("OLD1")
        assert match is not None
        assert lines(match) == {"A": (0, 400, 2)}
        assert [g["scorer"] for g in match["goals"]] == ["A"]
        assert match["playlist"] is None  # a column v1 did not have
        # Jobs already applied by the v1 program stay applied; new ones carry on.
        assert await store.apply(Job(seq=3, payload=update("OLD1", []), received_at=T0)) == \
            "replayed"
        await store.apply(Job(seq=4, payload=update("OLD1", [("A", "Steam|1|0", 0, 500, 3)],
                                                    (3, 1)), received_at=T0))
        assert (await careers(store))["A"] == (1, 3, 500)
    finally:
        await store.close()
    with sqlite3.connect(data / STATS_FILE) as conn:
        (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
    conn.close()
    assert version == SCHEMA_VERSION


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_database_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / STATS_FILE) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.close()
    store = StatsStore(data)
    with pytest.raises(StartupError, match="newer than this program"):
        await store.open()
    await store.close()


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_read_only_store_reads_and_never_creates(tmp_path: Path,
                                                         store: StatsStore) -> None:
    await apply_all(store, jobs(capture()[-3:]))
    reader = StatsStore(tmp_path / "data", readonly=True)
    await reader.open()
    try:
        assert lines(await only_match(reader)) == {"Zone Killa": (1, 326, 1), "nickm": (0, 0, 0)}
    finally:
        await reader.close()
    missing = StatsStore(tmp_path / "elsewhere", readonly=True)
    with pytest.raises(StartupError, match="no statistics database"):
        await missing.open()
    await missing.close()
    assert not (tmp_path / "elsewhere").exists()


async def test_each_goal_keeps_the_clock_it_fell_at(store: StatsStore) -> None:
    """The clock of the snapshot before GoalScored (the score goes up one message before
    it), overtime included; a goal applied late (a dead letter put back after later
    snapshots) has no clock rather than a wrong one."""
    a: list[tuple[str, str | None, int, int, int]] = [("A", "Steam|1|0", 0, 100, 1)]
    items = jobs([
        update(GUID, a, (0, 0), TimeSeconds=251, bOvertime=False),
        update(GUID, a, (1, 0), TimeSeconds=250, bOvertime=False),
        goal(GUID, "A", 0, time=12.0),
        update(GUID, a, (1, 0), TimeSeconds=0, bOvertime=False),
        update(GUID, a, (2, 0), TimeSeconds=31, bOvertime=True),
        goal(GUID, "A", 0, time=40.0),
        update(GUID, a, (2, 0), TimeSeconds=35, bOvertime=True),
        goal(GUID, "A", 0, time=50.0),  # applied late, below
    ])
    await apply_all(store, [*items[:6], items[6]])
    await apply_all(store, [Job(seq=8, payload=items[7].payload, received_at=T0)])
    late = Job(seq=7, payload=goal(GUID, "A", 0, time=60.0), received_at=T0)
    assert await apply_all(store, [late]) == ["applied"]
    match = await only_match(store)
    by_time = {g["game_time"]: (g["clock"], g["overtime"]) for g in match["goals"]}
    assert by_time == {12.0: (250, False), 40.0: (31, True), 50.0: (35, True),
                       60.0: (None, None)}


async def test_an_ended_match_keeps_its_final_scoreboard(store: StatsStore) -> None:
    """The start of the same match played again from another source (a recording sent
    twice) cannot roll back the final lines, team scores or careers of a match that is
    over; a snapshot with the same or higher numbers still counts."""
    final = update(GUID, [("A", "Steam|1|0", 0, 300, 2), ("B", "Steam|2|0", 1, 120, 1)], (2, 1))
    assert await apply_all(store, jobs([
        update(GUID, [("A", "Steam|1|0", 0, 100, 1), ("B", "Steam|2|0", 1, 20, 0)], (1, 0)),
        final,
        api("MatchEnded", {"MatchGuid": GUID, "WinnerTeamNum": 0}),
    ], source="first")) == ["applied", "applied", "applied"]
    before = await only_match(store), await careers(store)
    again = jobs([update(GUID, [("A", "Steam|1|0", 0, 100, 1), ("B", "Steam|2|0", 1, 20, 0)],
                         (1, 0))], first_seq=10, source="replay")
    assert await apply_all(store, again) == ["stale"]
    assert (await only_match(store), await careers(store)) == before
    assert store.counters.stale_skipped == 1
    # A late last snapshot with a higher number (it lost the race with MatchEnded) counts.
    late = jobs([update(GUID, [("A", "Steam|1|0", 0, 310, 2), ("B", "Steam|2|0", 1, 120, 1)],
                        (2, 1))], first_seq=11, source="first")
    assert await apply_all(store, late) == ["applied"]
    assert lines(await only_match(store))["A"] == (0, 310, 2)
