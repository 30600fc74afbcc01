"""Team colours and each player's car as last seen, on a real stats.db in tmp_path.

Colours: six hex digits in, ``"#rrggbb"`` out, anything else dropped; the last sound one
is kept; a change is written even inside a run whose scoreboard the fast path would
otherwise skip. Cars: the latest UpdateState's, ``null`` for a player it did not show
(an opponent from a player's seat) and once the match is over; kept across a restart in
the engine's state, which still loads when written before the cars were kept. A stats.db
of schema 4 migrates with its data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector.jobs import Job
from collector.stats import formats
from collector.stats.derived import CAR_KEYS, MatchStats
from collector.stats.schema import MIGRATIONS, SCHEMA_VERSION, STATS_FILE
from collector.stats.store import StatsStore
from tests.support.paths import CAPTURE_JSONL
from tests.support.stats import GUID, api, rows

pytestmark = pytest.mark.both_backends

T0 = 1_790_000_000.0
NICKM = "Steam|76561197960409023|0"
ZONE = "Epic|9dfa38bf97f9442997b464ea869eb96a|0"


def capture() -> list[dict[str, Any]]:
    """The recording's 438 messages (a player's seat: the opponent's car is not sent)."""
    return [json.loads(line) for line in CAPTURE_JSONL.read_text().splitlines()]


def jobs(payloads: Iterable[Any], *, first_seq: int = 1) -> list[Job]:
    return [Job(seq=first_seq + i, payload=p, received_at=T0 + i)
            for i, p in enumerate(payloads)]


def state(*, colours: tuple[Any, Any] = ("1873FF", "C26418"), secondary: Any = "E5E5E5",
          score: int = 100, goals: int = 0, blue_car: dict[str, Any] | None = None,
          orange_visible: bool = False, time_seconds: int = 250) -> dict[str, Any]:
    """An UpdateState of a 1v1 from Blue's seat: Orange's car is not shown unless asked."""
    blue = {"Name": "Blue1", "PrimaryId": "Steam|1|0", "TeamNum": 0, "Score": score,
            "Goals": 0, **(blue_car if blue_car is not None else {"bHasCar": True})}
    orange = {"Name": "Orange1", "PrimaryId": "Steam|2|0", "TeamNum": 1, "Score": 50}
    if orange_visible:
        orange.update({"bHasCar": True, "Boost": 12})
    return api("UpdateState", {
        "MatchGuid": GUID, "Players": [blue, orange],
        "Game": {"Teams": [
            {"Name": "Blue", "TeamNum": 0, "Score": goals, "ColorPrimary": colours[0],
             "ColorSecondary": secondary},
            {"Name": "Orange", "TeamNum": 1, "Score": 0, "ColorPrimary": colours[1],
             "ColorSecondary": secondary}],
            "TimeSeconds": time_seconds, "Arena": "Stadium_P", "Ball": {"TeamNum": 0}},
    })


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StatsStore]:
    s = StatsStore(tmp_path / "data")
    await s.open()
    yield s
    await s.close()


async def the_match(store: StatsStore) -> dict[str, Any]:
    match = await store.match(GUID)
    assert match is not None
    return match


def colours(match: dict[str, Any]) -> list[tuple[int, str | None, str | None]]:
    return [(t["num"], t["color_primary"], t["color_secondary"]) for t in match["teams"]]


def cars(match: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p["car"] for p in match["players"]}


# -- team colours -------------------------------------------------------------------------------


async def test_the_recording_stores_its_team_colours_as_css(store: StatsStore) -> None:
    # One run, one transaction: the fast path skips the tables for most of its ticks, yet
    # the colours are written (the first snapshot of a run always takes the full path).
    await store.apply_run(jobs(capture()))
    match = await store.match(1)
    assert match is not None
    assert colours(match) == [(0, "#1873ff", "#e5e5e5"), (1, "#c26418", "#e5e5e5")]
    page = await store.matches_page()
    assert colours(page["matches"][0]) == colours(match)


@pytest.mark.parametrize("hostile", ["red;background:url(x)", "12345G", "1873FF0",
                                     "#1873FF", "</style>", 1873, None])
async def test_a_hostile_colour_is_dropped_and_the_last_sound_one_kept(
        store: StatsStore, hostile: Any) -> None:
    await store.apply(Job(seq=1, payload=state(colours=(hostile, "C26418"), secondary=hostile),
                          received_at=T0))
    assert colours(await the_match(store)) == [(0, None, None), (1, "#c26418", None)]
    await store.apply(Job(seq=2, payload=state(), received_at=T0 + 1))
    sound = [(0, "#1873ff", "#e5e5e5"), (1, "#c26418", "#e5e5e5")]
    assert colours(await the_match(store)) == sound
    # A later malformed or missing colour does not wipe the last known one, also when
    # the row is written for another reason (Blue scored).
    await store.apply(Job(seq=3, payload=state(colours=(hostile, hostile), secondary=hostile,
                                               goals=1),
                          received_at=T0 + 2))
    match = await the_match(store)
    assert colours(match) == sound
    assert match["teams"][0]["score"] == 1


async def test_a_colour_change_inside_a_run_is_not_skipped_by_the_fast_path(
        store: StatsStore) -> None:
    same = [state() for _ in range(5)]  # identical scoreboards: the fast path's case
    changed = state(colours=("00FF00", "C26418"))
    outcomes = await store.apply_run(jobs([*same, changed, state(colours=("00FF00", "C26418"))]))
    assert outcomes[1:5] == ["unchanged"] * 4  # the fast path did take the repeats
    assert outcomes[5] == "applied"
    assert colours(await the_match(store))[0] == (0, "#00ff00", "#e5e5e5")


async def test_a_colour_change_in_the_next_run_is_written(store: StatsStore) -> None:
    await store.apply_run(jobs([state(), state()]))
    await store.apply_run(jobs([state(colours=("1873FF", "ABCDEF"))] * 3, first_seq=3))
    assert colours(await the_match(store)) == [(0, "#1873ff", "#e5e5e5"),
                                               (1, "#abcdef", "#e5e5e5")]


# -- cars ---------------------------------------------------------------------------------------


def test_the_engine_keeps_the_latest_cars_and_null_for_the_unseen() -> None:
    engine = MatchStats()
    for message in capture():
        engine.feed(formats.parse(message))
    seen = engine.cars()
    assert seen[ZONE] is None  # the opponent, from nickm's seat: no car fields at all
    assert seen[NICKM] == {"boost": 33, "speed": 0.3, "supersonic": False, "boosting": False,
                           "on_ground": True, "on_wall": False, "powersliding": False,
                           "demolished": False}
    assert tuple(seen[NICKM] or {}) == CAR_KEYS


def test_a_car_is_converted_to_uu_per_second_and_its_flags() -> None:
    engine = MatchStats()
    engine.feed(formats.parse(state(blue_car={
        "bHasCar": True, "Boost": 99.6, "Speed": 82.8, "bSupersonic": True, "bBoosting": True,
        "bOnWall": True, "bPowersliding": True}, orange_visible=True)))
    blue, orange = engine.cars()["Steam|1|0"], engine.cars()["Steam|2|0"]
    assert blue == {"boost": 100, "speed": 2300.0, "supersonic": True, "boosting": True,
                    "on_ground": False, "on_wall": True, "powersliding": True,
                    "demolished": False}
    assert isinstance(blue["boost"], int)
    assert orange is not None
    assert (orange["boost"], orange["speed"]) == (12, 0.0)
    # A demolished car is still seen: it says so, it is not "not visible".
    engine.feed(formats.parse(state(blue_car={"bDemolished": True})))
    demolished = engine.cars()["Steam|1|0"]
    assert demolished is not None
    assert demolished["demolished"] is True
    # The latest message decides: Orange is not shown any more, so no car.
    assert engine.cars()["Steam|2|0"] is None


def test_cars_survive_the_state_and_an_old_state_without_them_loads() -> None:
    engine = MatchStats()
    engine.feed(formats.parse(state(blue_car={"bHasCar": True, "Boost": 50})))
    saved = json.loads(json.dumps(engine.to_state()))
    restored = MatchStats.from_state(saved)
    assert restored.cars() == engine.cars()
    assert restored.to_state() == engine.to_state()
    # A state written before cars were kept (no "cars" key) still loads: no car known
    # until the next snapshot, every other figure as it was.
    old = {key: value for key, value in saved.items() if key != "cars"}
    legacy = MatchStats.from_state(old)
    assert legacy.cars() == {}
    assert legacy.players() == engine.players()
    legacy.feed(formats.parse(state(blue_car={"bHasCar": True, "Boost": 60})))
    car = legacy.cars()["Steam|1|0"]
    assert car is not None
    assert car["boost"] == 60


async def test_the_match_shows_the_cars_then_null_once_it_ended(store: StatsStore) -> None:
    await store.apply_run(jobs(capture()))
    match = await store.match(1)
    assert match is not None
    seen = cars(match)
    assert seen["Zone Killa"] is None  # not visible is null, never zeros
    assert seen["nickm"] is not None
    assert seen["nickm"]["boost"] == 33
    await store.apply(Job(seq=1000, payload=api("MatchEnded", {"MatchGuid": GUID,
                                                                "WinnerTeamNum": 1}),
                          received_at=T0 + 1000))
    ended = await store.match(1)
    assert ended is not None
    assert ended["ended_at"] is not None
    assert cars(ended) == {"nickm": None, "Zone Killa": None}
    # Not only hidden on reading: the stored car is gone with the engine's end.
    assert await rows(store, "SELECT count(*) FROM match_players WHERE car IS NOT NULL"
                      ) == [(0,)]


async def test_the_car_follows_every_tick_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = StatsStore(data)
    await store.open()
    try:
        await store.apply_run(jobs([state(blue_car={"bHasCar": True, "Boost": 40}),
                                    state(blue_car={"bHasCar": True, "Boost": 41})]))
        car = cars(await the_match(store))["Blue1"]
        assert car is not None
        assert car["boost"] == 41
    finally:
        await store.close()
    store = StatsStore(data)
    await store.open()
    try:
        # The first event after the restart shows no car (a clock tick): the engine, read
        # back from its state, still knows the last one.
        await store.apply(Job(seq=3, payload=api("ClockUpdatedSeconds", {
            "MatchGuid": GUID, "TimeSeconds": 249}), received_at=T0 + 3))
        car = cars(await the_match(store))["Blue1"]
        assert car is not None
        assert car["boost"] == 41
    finally:
        await store.close()


# -- the migration ------------------------------------------------------------------------------


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_a_schema_4_stats_db_migrates_and_its_live_match_goes_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The engine's state as the previous version wrote it: without "cars".
    engine = MatchStats()
    first = state(blue_car={"bHasCar": True, "Boost": 33})
    engine.feed(formats.parse(first))
    old_state = {key: value for key, value in engine.to_state().items() if key != "cars"}
    conn = sqlite3.connect(data_dir / STATS_FILE)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:4]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (4)")
    conn.execute("INSERT INTO matches (id, guid, feed, offline, arena, started_at, opened_seq, "
                 "opened_pos, last_event_at) VALUES (1, ?, '', 0, 'Stadium_P', ?, 1, 1, ?)",
                 (GUID, T0, T0))
    conn.execute("INSERT INTO feeds VALUES ('', 1, NULL)")
    conn.execute("INSERT INTO match_teams VALUES (1, 0, 'Blue', 0, 1.5), "
                 "(1, 1, 'Orange', 0, 0.0)")
    conn.execute("INSERT INTO players (id, key, name, primary_id, last_seq, matches, score) "
                 "VALUES (1, 'Steam|1|0', 'Blue1', 'Steam|1|0', 1, 1, 100), "
                 "(2, 'Steam|2|0', 'Orange1', 'Steam|2|0', 1, 1, 50)")
    conn.execute("INSERT INTO match_players (match_id, player_id, name, team, score, goals, "
                 "shots, assists, saves, touches, demos, updated_seq, stats) VALUES "
                 "(1, 1, 'Blue1', 0, 100, 0, 0, 0, 0, 0, 0, 1, '{\"tracked_s\": 1.0}'), "
                 "(1, 2, 'Orange1', 1, 50, 0, 0, 0, 0, 0, 0, 1, NULL)")
    conn.execute("INSERT INTO match_engine VALUES (1, ?)", (json.dumps(old_state),))
    conn.execute("UPDATE applied SET last_seq = 1")
    conn.commit()
    conn.close()

    store = StatsStore(data_dir)
    with capture_logs() as logs:
        await store.open()
    try:
        assert [e["version"] for e in logs if e["event"] == "stats_migrated"] == [5, 6]
        with sqlite3.connect(data_dir / STATS_FILE) as check:
            assert check.execute("SELECT version FROM schema_version").fetchone() == \
                (SCHEMA_VERSION,)
        match = await the_match(store)
        # The old rows, with the new fields empty.
        assert match["teams"] == [
            {"num": 0, "name": "Blue", "score": 0, "possession_s": 1.5,
             "color_primary": None, "color_secondary": None},
            {"num": 1, "name": "Orange", "score": 0, "possession_s": 0.0,
             "color_primary": None, "color_secondary": None}]
        assert cars(match) == {"Blue1": None, "Orange1": None}
        assert match["players"][0]["stats"]["tracked_s"] == 1.0
        # The live match goes on: its engine's old state loads, colours and cars come.
        with capture_logs() as logs:
            await store.apply(Job(seq=2, payload=state(blue_car={"bHasCar": True,
                                                                 "Boost": 70}),
                                  received_at=T0 + 2))
        assert not [e for e in logs if e["event"] == "stats_engine_state_unreadable"]
        match = await the_match(store)
        assert colours(match) == [(0, "#1873ff", "#e5e5e5"), (1, "#c26418", "#e5e5e5")]
        blue = cars(match)["Blue1"]
        assert blue is not None
        assert blue["boost"] == 70
        assert cars(match)["Orange1"] is None
    finally:
        await store.close()
