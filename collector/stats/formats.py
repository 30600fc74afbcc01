"""What clients send, normalised into typed events: the one place that knows the formats.

Four dialects arrive (see the formats note in the project's shared notes):

* the game's Stats API envelope ``{"Event": NAME, "Data": …}``; ``Data`` is an object or,
  as on the wire, a JSON string holding the object;
* SOS overlay messages ``{"event": "game:…", "data": …}``;
* the BakkesMod stats plugin: ``{"event": "player_scores", "player_scores": […]}`` (2022)
  and whole snapshots with ``match_id``, ``last_update_timestamp`` and ``roster[]`` (2023,
  ``"event": "online_game"``);
* anything else, kept as a :class:`Generic` event: nothing is rejected for being unknown.

:func:`parse` never raises: a known message with a shape it cannot read becomes a
:class:`Generic` event too. Numbers outside SQLite's signed 64-bit range are dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson

Format: TypeAlias = Literal["stats_api", "sos", "plugin", "unknown"]

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
_TEXT_MAX: Final = 256

_STATS_STARTS: Final = frozenset({"MatchCreated", "MatchInitialized"})
_SOS_STARTS: Final = frozenset({"game:match_created", "game:initialized"})


@dataclass(slots=True)  # not frozen: built for every tick (see Snapshot)
class Car:
    """A car as one Stats API UpdateState shows it, when the feed can see it.

    The game leaves zero and false values out: a visible car with no ``Boost`` key has
    0 boost, with no ``Speed`` key stands still, with no flag key has that flag false.
    ``speed_kmh`` is as sent (km/h; uu/s = km/h / 0.036); ``boost`` is 0-100.
    """

    boost: float = 0.0
    speed_kmh: float = 0.0
    has_car: bool = False
    demolished: bool = False
    boosting: bool = False
    on_ground: bool = False
    on_wall: bool = False
    powersliding: bool = False
    supersonic: bool = False


@dataclass(slots=True)  # not frozen: built for every tick (see Snapshot)
class PlayerLine:
    """One player's cumulative numbers in one match; None = this format does not say.

    ``car`` is the car's state when the feed can see it (the Stats API from a
    spectator's seat, or a player's own team); None when it cannot (an opponent seen
    from a player's seat: only the scoreboard fields come) or the format never says.
    """

    name: str
    primary_id: str | None = None
    team: int | None = None
    score: int | None = None
    goals: int | None = None
    shots: int | None = None
    assists: int | None = None
    saves: int | None = None
    touches: int | None = None
    demos: int | None = None
    car: Car | None = None


@dataclass(slots=True)  # not frozen: built for every tick (see Snapshot)
class TeamLine:
    """One team's name, score and colours.

    ``color_primary`` and ``color_secondary`` are ``"#rrggbb"`` (lowercase), or None when
    the format does not send them or sends anything but exactly six hex digits (a
    colour ends up in a browser's CSS: only this one shape passes).
    """

    num: int
    name: str | None = None
    score: int | None = None
    color_primary: str | None = None
    color_secondary: str | None = None


@dataclass(slots=True)  # not frozen: built for every tick (see Snapshot)
class Snapshot:
    """The state of a match at one moment (cumulative numbers, not increments).

    Snapshots, their lines and cars are read and never changed. They are not frozen
    because a frozen dataclass costs several times as much to create, and 60 to 120 of
    them come every second per player (the same reason as for collector.jobs.Job).

    ``match_guid``: the match's id; ``""`` when the format says "offline match" (the
    Stats API's empty MatchGuid); None when the format carries no match id at all.
    """

    format: Format
    match_guid: str | None
    players: tuple[PlayerLine, ...] = ()
    teams: tuple[TeamLine, ...] = ()
    arena: str | None = None
    playlist: str | None = None
    time_seconds: int | None = None
    overtime: bool = False
    winner: int | None = None  # team number, once the game names a winner
    replay: bool = False
    timestamp: int | None = None  # the 2023 plugin's last_update_timestamp (whole seconds)
    ball_team: int | None = None  # the team that last touched the ball; 255 = nobody yet


@dataclass(frozen=True, slots=True)
class Goal:
    """A goal (never the bogus GoalScored that follows a goal replay)."""

    format: Format
    match_guid: str | None
    scorer: str
    scorer_id: str | None = None
    scorer_team: int | None = None
    assister: str | None = None
    speed: float | None = None
    game_time: float | None = None
    impact: tuple[float, float, float] | None = None
    last_touch: str | None = None


@dataclass(frozen=True, slots=True)
class MatchStarted:
    """MatchCreated / MatchInitialized: a match begins."""

    format: Format
    match_guid: str | None
    name: str


@dataclass(frozen=True, slots=True)
class MatchEnded:
    """MatchEnded: the match is over; ``winner`` is the winning team's number if known."""

    format: Format
    match_guid: str | None
    winner: int | None = None


@dataclass(frozen=True, slots=True)
class MatchClosed:
    """MatchDestroyed: the match is gone (with or without a MatchEnded before it)."""

    format: Format
    match_guid: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A known message that must not count, e.g. the bogus GoalScored after a goal replay."""

    format: Format
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Generic:
    """Anything else: kept as it came (``data`` is the decoded body when there is one)."""

    format: Format
    name: str
    data: Any = None


PhaseKind: TypeAlias = Literal["round_started", "countdown", "paused", "unpaused", "replay",
                              "podium"]


@dataclass(frozen=True, slots=True)
class Phase(Generic):
    """A Stats API event that starts or stops live play (RoundStarted, CountdownBegin,
    MatchPaused, MatchUnpaused, the goal replay's events, PodiumStart).

    A :class:`Generic` event for the scoreboard (nothing to store), typed for the
    derived statistics.
    """

    kind: PhaseKind = "countdown"


@dataclass(frozen=True, slots=True)
class Clock(Generic):
    """ClockUpdatedSeconds: the game clock shows a new whole second (a Generic event)."""

    time_seconds: int | None = None
    overtime: bool = False


@dataclass(frozen=True, slots=True)
class Demolition(Generic):
    """StatfeedEvent ``Demolish``: ``attacker`` destroyed ``victim`` (a Generic event).

    The statfeed is global: it names players the feed cannot otherwise see.
    """

    attacker: str = ""
    victim: str = ""
    attacker_team: int | None = None
    victim_team: int | None = None
    attacker_id: str | None = None
    victim_id: str | None = None


Event: TypeAlias = (
    Snapshot | Goal | MatchStarted | MatchEnded | MatchClosed | Ignored | Generic
)

_PHASES: Final[dict[str, PhaseKind]] = {
    "RoundStarted": "round_started",
    "CountdownBegin": "countdown",
    "MatchPaused": "paused",
    "MatchUnpaused": "unpaused",
    "GoalReplayStart": "replay",
    "GoalReplayWillEnd": "replay",
    "GoalReplayEnd": "replay",
    "PodiumStart": "podium",
}
#: Any of these keys on a Stats API player says the feed can see that car.
_CAR_KEYS: Final = frozenset({"bHasCar", "bDemolished", "Boost", "Speed", "bBoosting",
                              "bOnGround", "bOnWall", "bPowersliding", "bSupersonic"})
_INF: Final = float("inf")
#: A team colour as the Stats API and SOS send it: six hex digits, no '#'.
_HEX_COLOR: Final = re.compile(r"[0-9A-Fa-f]{6}")


def parse(payload: Any) -> Event:
    """Normalise one received event (a JSON value) into a typed event; never raises."""
    if not isinstance(payload, Mapping):
        return Generic("unknown", type(payload).__name__, payload)
    try:
        if "Event" in payload and isinstance(payload["Event"], str):
            return _stats_api(payload["Event"], payload.get("Data"))
        event = payload.get("event")
        if isinstance(event, str) and event.startswith("game:"):
            return _sos(event, payload.get("data"))
        if event == "player_scores" or "player_scores" in payload:
            return _plugin_scores(payload)
        body = _plugin_snapshot_body(payload)
        if body is not None:
            return _plugin_snapshot(body)
    except (TypeError, ValueError, AttributeError, KeyError):
        pass  # a known name with a shape we cannot read: keep it as a generic event
    name = payload.get("Event") or payload.get("event") or "unknown"
    return Generic("unknown", name if isinstance(name, str) else "unknown", payload)


# -- the game's Stats API ----------------------------------------------------------------


def _decode(data: Any) -> Any:
    """`Data` as an object: decode the wire's JSON string; None stands for {}."""
    if data is None:
        return {}
    if isinstance(data, str | bytes):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
    return data


def _stats_api(name: str, raw: Any) -> Event:
    data = _decode(raw)
    if not isinstance(data, Mapping):
        return Generic("stats_api", name, data)
    guid = _guid(data.get("MatchGuid"))
    if name == "UpdateState":
        return _stats_update(data, guid)
    if name == "GoalScored":
        scorer = _mapping(data.get("Scorer"))
        assister = _mapping(data.get("Assister"))
        touch = _mapping(data.get("BallLastTouch"))
        return _goal(
            "stats_api", guid,
            scorer=_text(scorer.get("Name")),
            scorer_team=_int(scorer.get("TeamNum")),
            assister=_text(assister.get("Name")),
            speed=_float(data.get("GoalSpeed")),
            game_time=_float(data.get("GoalTime")),
            impact=_point(data.get("ImpactLocation")),
            last_touch=_text(touch.get("Player")),
        )
    if name in _STATS_STARTS:
        return MatchStarted("stats_api", guid, name)
    if name == "MatchEnded":
        return MatchEnded("stats_api", guid, _int(data.get("WinnerTeamNum")))
    if name == "MatchDestroyed":
        return MatchClosed("stats_api", guid)
    if name in _PHASES:
        return Phase("stats_api", name, data, kind=_PHASES[name])
    if name == "ClockUpdatedSeconds":
        return Clock("stats_api", name, data, time_seconds=_int(data.get("TimeSeconds")),
                     overtime=data.get("bOvertime") is True)
    if name == "StatfeedEvent" and data.get("EventName") == "Demolish":
        return _demolition(data)
    return Generic("stats_api", name, data)


def _demolition(data: Mapping[str, Any]) -> Generic:
    """A Demolish statfeed event; a plain Generic when it does not name both cars."""
    main, secondary = _mapping(data.get("MainTarget")), _mapping(data.get("SecondaryTarget"))
    attacker, victim = _text(main.get("Name")), _text(secondary.get("Name"))
    if not attacker or not victim:
        return Generic("stats_api", "StatfeedEvent", data)
    return Demolition(
        "stats_api", "StatfeedEvent", data, attacker=attacker, victim=victim,
        attacker_team=_int(main.get("TeamNum")), victim_team=_int(secondary.get("TeamNum")),
        attacker_id=_primary_id(main.get("PrimaryId")),
        victim_id=_primary_id(secondary.get("PrimaryId")),
    )


def _car(player: Mapping[str, Any]) -> Car | None:
    """The car's state, or None when the message does not show it (not visible)."""
    if _CAR_KEYS.isdisjoint(player):
        return None
    boost = _float(player.get("Boost"))
    speed = _float(player.get("Speed"))
    return Car(
        boost=0.0 if boost is None else min(max(boost, 0.0), 100.0),
        speed_kmh=0.0 if speed is None else abs(speed),
        has_car=player.get("bHasCar") is True,
        demolished=player.get("bDemolished") is True,
        boosting=player.get("bBoosting") is True,
        on_ground=player.get("bOnGround") is True,
        on_wall=player.get("bOnWall") is True,
        powersliding=player.get("bPowersliding") is True,
        supersonic=player.get("bSupersonic") is True,
    )


def _stats_update(data: Mapping[str, Any], guid: str | None) -> Snapshot:
    game = _mapping(data.get("Game"))
    teams = tuple(
        TeamLine(num, _text(t.get("Name")), _int(t.get("Score")),
                 _color(t.get("ColorPrimary")), _color(t.get("ColorSecondary")))
        for t in _mappings(game.get("Teams"))
        if (num := _int(t.get("TeamNum"))) is not None
    )
    players = tuple(
        line for p in _mappings(data.get("Players"))
        if (line := _player(
            p.get("Name"), p.get("PrimaryId"), team=p.get("TeamNum"), score=p.get("Score"),
            goals=p.get("Goals"), shots=p.get("Shots"), assists=p.get("Assists"),
            saves=p.get("Saves"), touches=p.get("Touches"), demos=p.get("Demos"),
            car=_car(p),
        )) is not None
    )
    return Snapshot(
        "stats_api", guid, players=players, teams=teams,
        arena=_text(game.get("Arena")),
        time_seconds=_int(game.get("TimeSeconds")),
        overtime=game.get("bOvertime") is True,
        winner=_winner(game.get("bHasWinner"), game.get("Winner"), teams),
        replay=game.get("bReplay") is True,
        ball_team=_int(_mapping(game.get("Ball")).get("TeamNum")),
    )


# -- SOS ---------------------------------------------------------------------------------


def _sos(name: str, data: Any) -> Event:
    body = data if isinstance(data, Mapping) else {}
    guid = _guid(body.get("match_guid"))
    if name == "game:update_state":
        if not isinstance(data, Mapping) or data.get("hasGame") is False:
            return Generic("sos", name, data)  # menus send states without a game
        return _sos_update(data, guid)
    if name == "game:goal_scored":
        if not isinstance(data, Mapping):
            return Generic("sos", name, data)  # old SOS: the event's name only, no numbers
        scorer = _mapping(data.get("scorer"))
        assister = _mapping(data.get("assister"))
        touch = _mapping(data.get("ball_last_touch"))
        return _goal(
            "sos", guid,
            scorer=_text(scorer.get("name")),
            scorer_id=_primary_id(scorer.get("id")),
            scorer_team=_int(scorer.get("teamnum")),
            assister=_text(assister.get("name")),
            speed=_float(data.get("goalspeed")),
            game_time=_float(data.get("goaltime")),
            impact=_point(data.get("impact_location")),
            last_touch=_text(touch.get("player")),
        )
    if name in _SOS_STARTS:
        return MatchStarted("sos", guid, name)
    if name == "game:match_ended":
        return MatchEnded("sos", guid, _int(body.get("winner_team_num")))
    if name == "game:match_destroyed":
        return MatchClosed("sos", guid)
    return Generic("sos", name, data)


def _sos_update(data: Mapping[str, Any], guid: str | None) -> Snapshot:
    game = _mapping(data.get("game"))
    raw_teams = game.get("teams")
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(raw_teams, Mapping):
        pairs = raw_teams.items()
    elif isinstance(raw_teams, list):
        pairs = enumerate(raw_teams)
    else:
        pairs = ()
    teams = tuple(
        TeamLine(num, _text(t.get("name")), _int(t.get("score")),
                 _color(t.get("color_primary")), _color(t.get("color_secondary")))
        for key, t in pairs
        if isinstance(t, Mapping) and (num := _int(key)) is not None
    )
    raw_players = data.get("players")
    values = raw_players.values() if isinstance(raw_players, Mapping) else raw_players
    players = tuple(
        line for p in _mappings(values)
        if (line := _player(
            p.get("name"), p.get("primaryID"), team=p.get("team"), score=p.get("score"),
            goals=p.get("goals"), shots=p.get("shots"), assists=p.get("assists"),
            saves=p.get("saves"), touches=p.get("touches"), demos=p.get("demos"),
        )) is not None
    )
    time_seconds = game.get("time_seconds", game.get("time"))
    return Snapshot(
        "sos", guid, players=players, teams=teams,
        arena=_text(game.get("arena")),
        time_seconds=_int(time_seconds),
        overtime=game.get("isOT") is True,
        winner=_winner(game.get("hasWinner"), game.get("winner"), teams),
        replay=game.get("isReplay") is True,
    )


# -- the BakkesMod stats plugin ----------------------------------------------------------


def _plugin_scores(payload: Mapping[str, Any]) -> Event:
    """2022: a list of player lines, no match id, no teams."""
    players = tuple(
        line for p in _mappings(payload.get("player_scores"))
        if (line := _player(
            p.get("player_name"), p.get("player_id"), team=p.get("player_team"),
            score=p.get("player_score"), goals=p.get("player_goals"),
            shots=p.get("player_shots"), assists=p.get("player_assists"),
            saves=p.get("player_saves"), touches=p.get("player_touches"),
            demos=p.get("player_demos"),
        )) is not None
    )
    if not players:
        return Generic("plugin", "player_scores", payload)
    return Snapshot("plugin", None, players=players)


def _plugin_snapshot_body(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The 2023 snapshot: the payload itself or its nested object, whichever has roster[]."""
    if isinstance(payload.get("roster"), list):
        return payload
    if payload.get("event") == "online_game":
        for key in ("online_game", "data", "game"):
            nested = payload.get(key)
            if isinstance(nested, Mapping) and isinstance(nested.get("roster"), list):
                return nested
    return None


def _plugin_snapshot(body: Mapping[str, Any]) -> Snapshot:
    """2023: a whole snapshot with match_id, last_update_timestamp and roster[]."""
    players = tuple(
        line for p in _mappings(body.get("roster"))
        if (line := _player(
            p.get("name"),
            p.get("primary_id", p.get("unique_id", p.get("player_id", p.get("id")))),
            team=p.get("team_num", p.get("team")), score=p.get("score"),
            goals=p.get("goals"), shots=p.get("shots"), assists=p.get("assists"),
            saves=p.get("saves"), touches=p.get("touches"), demos=p.get("demos"),
        )) is not None
    )
    teams = tuple(
        TeamLine(num=num, name=_text(t.get("name")), score=_int(t.get("score")))
        for t in _mappings(body.get("teams"))
        if (num := _int(t.get("team_num", t.get("num")))) is not None
    )
    match_id = body.get("match_id")
    guid = _guid(str(match_id) if isinstance(match_id, int) else match_id)
    playlist = body.get("playlist", body.get("playlist_name", body.get("playlist_id")))
    return Snapshot(
        "plugin", guid, players=players, teams=teams,
        arena=_text(body.get("arena", body.get("map"))),
        playlist=_text(str(playlist) if isinstance(playlist, int) else playlist),
        overtime=body.get("overtime") is True or body.get("is_overtime") is True,
        timestamp=_int(body.get("last_update_timestamp")),
    )


# -- shared pieces -----------------------------------------------------------------------


def _goal(
    fmt: Format,
    guid: str | None,
    *,
    scorer: str | None,
    scorer_team: int | None,
    assister: str | None,
    speed: float | None,
    game_time: float | None,
    impact: tuple[float, float, float] | None,
    last_touch: str | None,
    scorer_id: str | None = None,
) -> Goal | Ignored:
    """A goal, or Ignored for the bogus one fired when the goal replay ends."""
    name = "GoalScored" if fmt == "stats_api" else "game:goal_scored"
    if not scorer:
        return Ignored(fmt, name, "no scorer (the echo fired after a goal replay)")
    if not speed and not game_time:
        return Ignored(fmt, name, "speed and time 0 (the echo fired after a goal replay)")
    return Goal(fmt, guid, scorer=scorer, scorer_id=scorer_id, scorer_team=scorer_team,
                assister=assister or None, speed=speed, game_time=game_time, impact=impact,
                last_touch=last_touch)


def _player(
    name: Any, primary_id: Any, *, car: Car | None = None, team: Any = None,
    score: Any = None, goals: Any = None, shots: Any = None, assists: Any = None,
    saves: Any = None, touches: Any = None, demos: Any = None,
) -> PlayerLine | None:
    text = _text(name)
    pid = _primary_id(primary_id)
    if not text:
        if pid is None:
            return None  # nobody to attach the numbers to
        text = pid
    # Positional, in PlayerLine's field order: 60 UpdateStates a second each build one
    # line per player.
    return PlayerLine(text, pid, _int(team), _int(score), _int(goals), _int(shots),
                      _int(assists), _int(saves), _int(touches), _int(demos), car)


def _primary_id(value: Any) -> str | None:
    """A real account id, or None (bots have "Unknown|0|0", SOS sends 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text(value)
    if not text:
        return None
    return _account_id(text)


@functools.lru_cache(maxsize=4096)
def _account_id(text: str) -> str | None:
    """`text` when it names a real account (the same few ids come with every tick)."""
    parts = text.split("|")
    uid = parts[1] if len(parts) >= 2 else parts[0]
    if uid.strip() in {"", "0"} or parts[0].lower() == "unknown":
        return None
    return text


def _winner(has_winner: Any, winner: Any, teams: tuple[TeamLine, ...]) -> int | None:
    """The winning team's number, when the game says there is one."""
    if has_winner is not True:
        return None
    number = _int(winner)
    if number is not None:
        return number
    for team in teams:
        if team.name is not None and team.name == winner:
            return team.num
    return None


def _guid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip()[:_TEXT_MAX]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, list | tuple) or (
        isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)
    ):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value[:_TEXT_MAX]


def _int(value: Any) -> int | None:
    """An integer within SQLite's range, or None."""
    # The common cases first: called ~25 times per UpdateState, and the game leaves
    # zeros out (None here).
    if value is None:
        return None
    if type(value) is int:
        return value if _INT_MIN <= value <= _INT_MAX else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        value = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit() or len(text) > 20:
            return None
        value = int(text)
    if not isinstance(value, int) or not _INT_MIN <= value <= _INT_MAX:
        return None
    return value


def _float(value: Any) -> float | None:
    if type(value) is float:  # the common case
        return None if value != value or value in (_INF, -_INF) else value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number


def _color(value: Any) -> str | None:
    """``"#rrggbb"`` from exactly six hex digits; None for anything else."""
    if type(value) is not str or len(value) != 6:
        return None
    return _hex_color(value)


@functools.lru_cache(maxsize=256)
def _hex_color(text: str) -> str | None:
    """The colour of six characters (the same few come with every tick)."""
    if _HEX_COLOR.fullmatch(text) is None:
        return None
    return "#" + text.lower()


def _point(value: Any) -> tuple[float, float, float] | None:
    point = _mapping(value)
    x, y = _float(point.get("X")), _float(point.get("Y"))
    if x is None or y is None:
        return None
    z = _float(point.get("Z"))
    return (x, y, 0.0 if z is None else z)
