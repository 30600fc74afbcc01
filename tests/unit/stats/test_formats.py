"""collector.formats: every dialect in, typed events out; nothing rejected for being unknown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from collector.stats import formats
from collector.stats.formats import (
    Generic,
    Goal,
    Ignored,
    MatchClosed,
    MatchEnded,
    MatchStarted,
    PlayerLine,
    Snapshot,
    TeamLine,
)
from tests.support.paths import CAPTURE_JSONL

GUID = "1F7ED23011F1435166EBAB919DB5566D"


def capture() -> list[dict[str, Any]]:
    """The recording's 438 messages, as the game sent them (Data double encoded)."""
    return [json.loads(line) for line in CAPTURE_JSONL.read_text().splitlines()]


def stats_api(event: str, data: dict[str, Any], *, encoded: bool = True) -> dict[str, Any]:
    """A Stats API envelope; `encoded` puts Data in as a JSON string, as on the wire."""
    return {"Event": event, "Data": json.dumps(data) if encoded else data}


def test_the_recording_parses_into_snapshots_and_generic_events() -> None:
    events = [formats.parse(message) for message in capture()]
    snapshots = [e for e in events if isinstance(e, Snapshot)]
    generic = [e for e in events if isinstance(e, Generic)]
    assert len(snapshots) == 429
    assert sorted({e.name for e in generic}) == ["BallHit", "ClockUpdatedSeconds"]
    last = snapshots[-1]
    assert last.match_guid == GUID
    assert last.arena == "cs_p"
    assert last.teams == (TeamLine(0, "Blue", 0, "#1873ff", "#e5e5e5"),
                          TeamLine(1, "Orange", 1, "#c26418", "#e5e5e5"))
    zone = next(p for p in last.players if p.name == "Zone Killa")
    assert zone == PlayerLine(
        name="Zone Killa", primary_id="Epic|9dfa38bf97f9442997b464ea869eb96a|0", team=1,
        score=326, goals=1, shots=1, assists=0, saves=0, touches=266, demos=0,
    )
    nickm = next(p for p in last.players if p.name == "nickm")
    assert (nickm.team, nickm.goals, nickm.primary_id) == (0, 0, "Steam|76561197960409023|0")


def test_data_as_object_or_as_json_string_is_the_same_event() -> None:
    message = capture()[0]
    as_object = {"Event": message["Event"], "Data": json.loads(message["Data"])}
    assert formats.parse(as_object) == formats.parse(message)
    assert isinstance(formats.parse(message), Snapshot)


def test_goal_scored_is_a_goal_with_scorer_assister_speed_and_time() -> None:
    event = formats.parse(stats_api("GoalScored", {
        "MatchGuid": GUID, "GoalSpeed": 87.1, "GoalTime": 12.5,
        "ImpactLocation": {"X": 1.0, "Y": 5120.0, "Z": 90.0},
        "Scorer": {"Name": "Zone Killa", "Shortcut": 5, "TeamNum": 1},
        "Assister": {"Name": "mate", "Shortcut": 6, "TeamNum": 1},
        "BallLastTouch": {"Player": "Zone Killa", "Speed": 80.0},
    }))
    assert event == Goal("stats_api", GUID, scorer="Zone Killa", scorer_team=1,
                         assister="mate", speed=87.1, game_time=12.5,
                         impact=(1.0, 5120.0, 90.0), last_touch="Zone Killa")


@pytest.mark.parametrize("data", [
    pytest.param({"GoalSpeed": 0, "GoalTime": 0, "Scorer": {"Name": "", "TeamNum": 1}},
                 id="the-real-echo"),
    pytest.param({"GoalSpeed": 0, "GoalTime": 0, "Scorer": {"Name": "Zone Killa"}},
                 id="speed-and-time-zero"),
    pytest.param({"GoalSpeed": 50.0, "GoalTime": 3.0, "Scorer": {"Name": ""}},
                 id="no-scorer"),
])
def test_the_bogus_goal_after_a_goal_replay_is_not_a_goal(data: dict[str, Any]) -> None:
    event = formats.parse(stats_api("GoalScored", {"MatchGuid": GUID, **data}))
    assert isinstance(event, Ignored)
    assert event.name == "GoalScored"


def test_match_lifecycle_events() -> None:
    assert formats.parse(stats_api("MatchCreated", {"MatchGuid": GUID})) == \
        MatchStarted("stats_api", GUID, "MatchCreated")
    assert formats.parse(stats_api("MatchInitialized", {"MatchGuid": ""})) == \
        MatchStarted("stats_api", "", "MatchInitialized")
    assert formats.parse(stats_api("MatchEnded", {"MatchGuid": GUID, "WinnerTeamNum": 1})) == \
        MatchEnded("stats_api", GUID, 1)
    assert formats.parse(stats_api("MatchDestroyed", {"MatchGuid": GUID})) == \
        MatchClosed("stats_api", GUID)


def test_an_offline_match_has_an_empty_guid_and_a_winner_named_by_team() -> None:
    event = formats.parse(stats_api("UpdateState", {
        "MatchGuid": "",
        "Players": [{"Name": "Armstrong", "PrimaryId": "Unknown|0|0", "TeamNum": 1,
                     "Score": 100, "Goals": 1}],
        "Game": {"Teams": [{"Name": "Blue", "TeamNum": 0, "Score": 0},
                           {"Name": "Orange", "TeamNum": 1, "Score": 1}],
                 "bHasWinner": True, "Winner": "Orange", "bOvertime": True},
    }, encoded=False))
    assert isinstance(event, Snapshot)
    assert event.match_guid == ""
    assert event.winner == 1
    assert event.overtime is True
    (bot,) = event.players
    assert bot.primary_id is None  # a bot has no account: it is known by its name
    assert bot.shots is None  # left out = not said


def test_sos_update_state_and_goal() -> None:
    update = formats.parse({"event": "game:update_state", "data": {
        "event": "gamestate", "hasGame": True, "match_guid": "ABC",
        "game": {"arena": "Stadium_P", "isOT": False, "hasWinner": False, "winner": "",
                 "time_seconds": 250,
                 "teams": {"0": {"name": "BLUE", "score": 2}, "1": {"name": "ORANGE", "score": 0}}},
        "players": {"Alpha_1": {"name": "Alpha", "id": "Alpha_1", "primaryID": "Steam|1|0",
                                "team": 0, "score": 250, "goals": 2, "shots": 3, "assists": 0,
                                "saves": 1, "touches": 20, "demos": 1}},
    }})
    assert update == Snapshot(
        "sos", "ABC",
        players=(PlayerLine("Alpha", "Steam|1|0", 0, 250, 2, 3, 0, 1, 20, 1),),
        teams=(TeamLine(0, "BLUE", 2), TeamLine(1, "ORANGE", 0)),
        arena="Stadium_P", time_seconds=250,
    )
    goal = formats.parse({"event": "game:goal_scored", "data": {
        "goalspeed": 99.5, "goaltime": 40.0, "impact_location": {"X": 3.0, "Y": 4.0},
        "scorer": {"name": "Alpha", "id": "Alpha_1", "teamnum": 0},
        "assister": {"name": "", "id": ""}, "ball_last_touch": {"player": "Alpha", "speed": 9.0},
    }})
    assert isinstance(goal, Goal)
    assert (goal.scorer, goal.scorer_team, goal.assister, goal.speed) == ("Alpha", 0, None, 99.5)
    assert goal.impact == (3.0, 4.0, 0.0)
    ended = formats.parse({"event": "game:match_ended", "data": {"winner_team_num": 0}})
    assert ended == MatchEnded("sos", None, 0)
    assert formats.parse({"event": "game:match_destroyed", "data": "game_match_destroyed"}) == \
        MatchClosed("sos", None)
    assert formats.parse({"event": "game:match_created", "data": "game_match_created"}) == \
        MatchStarted("sos", None, "game:match_created")


def test_plugin_2022_player_scores() -> None:
    event = formats.parse({"event": "player_scores", "player_scores": [
        {"player_name": "Alpha", "player_score": 120, "player_goals": 1, "player_saves": 0,
         "player_assists": 1, "player_shots": 2},
        {"player_name": "Beta", "player_score": 80, "player_goals": 0, "player_saves": 2,
         "player_assists": 0, "player_shots": 1},
    ]})
    assert isinstance(event, Snapshot)
    assert event.format == "plugin"
    assert event.match_guid is None  # no match id in this format at all
    assert event.players[0] == PlayerLine("Alpha", None, None, 120, 1, 2, 1, 0, None, None)


@pytest.mark.parametrize("wrap", ["flat", "nested"])
def test_plugin_2023_snapshot(wrap: str) -> None:
    body = {"match_id": "M-77", "last_update_timestamp": 1700000123, "playlist": "Ranked Doubles",
            "roster": [{"name": "Alpha", "team_num": 0, "score": 300, "goals": 2, "saves": 1,
                        "assists": 0, "shots": 4, "mmr": 1234.5}]}
    payload = {"event": "online_game", **body} if wrap == "flat" else \
        {"event": "online_game", "data": body}
    event = formats.parse(payload)
    assert isinstance(event, Snapshot)
    assert (event.match_guid, event.timestamp, event.playlist) == \
        ("M-77", 1700000123, "Ranked Doubles")
    assert event.players == (PlayerLine("Alpha", None, 0, 300, 2, 4, 0, 1, None, None),)


@pytest.mark.parametrize("payload", [
    pytest.param({"Event": "StatfeedEvent", "Data": {"EventName": "Demolish"}}, id="known-name"),
    pytest.param({"Event": "SomethingNew2027", "Data": "{\"x\": 1}"}, id="unknown-stats-name"),
    pytest.param({"Event": "UpdateState", "Data": "{not json"}, id="undecodable-data"),
    pytest.param({"Event": "UpdateState", "Data": [1, 2]}, id="data-not-an-object"),
    pytest.param({"event": "game:podium_start", "data": "game_podium_start"}, id="sos-other"),
    pytest.param({"event": "game:update_state", "data": {"hasGame": False, "match_guid": "",
                                                          "players": {}, "game": {}}},
                 id="sos-state-in-menus"),
    pytest.param({"event": "ball_hit"}, id="plugin-other"),
    pytest.param({"hello": "world"}, id="anything"),
    pytest.param({"event": "player_scores", "player_scores": "nope"}, id="bad-scores"),
])
def test_anything_else_is_kept_as_a_generic_event(payload: dict[str, Any]) -> None:
    event = formats.parse(payload)
    assert isinstance(event, Generic)


def test_numbers_out_of_sqlite_range_and_wrong_types_are_dropped_not_raised() -> None:
    event = formats.parse(stats_api("UpdateState", {
        "MatchGuid": GUID,
        "Players": [{"Name": "Big", "Score": 2**70, "Goals": "3", "Shots": True,
                     "Saves": 1.0, "Touches": float("nan")}, "not a player", {"Score": 1}],
        "Game": {"Teams": "nope", "Arena": 5},
    }, encoded=False))
    assert isinstance(event, Snapshot)
    (big,) = event.players
    assert (big.score, big.goals, big.shots, big.saves, big.touches) == (None, 3, None, 1, None)
    assert event.arena is None
    assert event.teams == ()



# -- team colours ------------------------------------------------------------------------------

#: What a stranger may put where a colour goes; each must come out None (it ends up in CSS).
HOSTILE_COLORS = [
    "red;background:url(x)", "12345G", "1873FF0", "1873F", "#1873FF", "#1873F", " 1873FF",
    "1873FF ", "1873FF\n", "", "0x1873",
    "\uff11\uff18\uff17\uff13\uff26\uff26",  # fullwidth digits and letters
    "\u0660\u0661\u0662\u0663\u0664\u0665",  # Arabic-Indic digits (str.isdigit says yes)
    1873, 0x1873FF, None, True,
    ["1873FF"], {"hex": "1873FF"}, 18.73,
]


def stats_api_teams(primary: Any, secondary: Any) -> dict[str, Any]:
    return stats_api("UpdateState", {"MatchGuid": GUID, "Players": [], "Game": {"Teams": [
        {"Name": "Blue", "TeamNum": 0, "Score": 0, "ColorPrimary": primary,
         "ColorSecondary": secondary}]}})


def sos_teams(primary: Any, secondary: Any) -> dict[str, Any]:
    return {"event": "game:update_state", "data": {"match_guid": "ABC", "hasGame": True,
            "players": {}, "game": {"teams": {"0": {
                "name": "BLUE", "score": 1, "color_primary": primary,
                "color_secondary": secondary}}}}}


@pytest.mark.parametrize("message", [stats_api_teams, sos_teams], ids=["stats_api", "sos"])
def test_team_colours_are_six_hex_digits_made_lowercase_css(message: Any) -> None:
    event = formats.parse(message("1873FF", "e5E5e5"))
    assert isinstance(event, Snapshot)
    (team,) = event.teams
    assert (team.color_primary, team.color_secondary) == ("#1873ff", "#e5e5e5")


@pytest.mark.parametrize("message", [stats_api_teams, sos_teams], ids=["stats_api", "sos"])
@pytest.mark.parametrize("hostile", HOSTILE_COLORS, ids=repr)
def test_anything_but_six_hex_digits_is_no_colour(message: Any, hostile: Any) -> None:
    event = formats.parse(message(hostile, "E5E5E5"))
    assert isinstance(event, Snapshot)
    (team,) = event.teams
    assert team.color_primary is None
    assert team.color_secondary == "#e5e5e5"  # the other, sound one stays
    assert team.name is not None  # the rest of the team is read as always


def test_formats_without_colours_leave_them_none() -> None:
    event = formats.parse({"event": "online_game", "match_id": 7, "roster": [
        {"name": "A", "team_num": 0, "score": 1}], "teams": [{"team_num": 0, "score": 1}]})
    assert isinstance(event, Snapshot)
    assert event.teams == (TeamLine(0, None, 1, None, None),)
