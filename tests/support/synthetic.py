"""Synthetic Rocket League Stats API streams, with answers known by construction.

:class:`Stream` writes what the game writes: ``{"Event": NAME, "Data": "<JSON string>"}``
(double encoded), UpdateState at a chosen PacketSendRate with zero and false values left
out, ClockUpdatedSeconds just before the first tick of each new game second (as in the
real recording), and whatever events the script asks for. Time is counted in ticks, so
a script whose spans are multiples of 1/30 s gives the same game at 30, 60 and 120 Hz.

:func:`scripted_match` is the match whose figures tests/unit/stats/test_derived.py
states by hand; :func:`long_match` repeats its middle for about five minutes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

GUID = "5E1F0000000000000000000000000017"
KMH_PER_UU_S = 0.036


@dataclass(frozen=True)
class Player:
    """A player of the synthetic match; ``visible`` False sends only scoreboard fields."""

    name: str
    primary_id: str
    team: int
    shortcut: int
    visible: bool = True


@dataclass(frozen=True)
class Car:
    """A car over a span: ``boost`` constant or a linear ramp ``(start, end)``."""

    boost: float | tuple[float, float] = 33
    speed: float = 0.0  # uu/s
    ground: bool = True
    wall: bool = False
    boosting: bool = False
    powerslide: bool = False
    demolished: bool = False

    def at(self, fraction: float) -> Car:
        """This car at ``fraction`` (0 ≤ f < 1) of its span, boost rounded as the game sends it."""
        if isinstance(self.boost, tuple):
            start, end = self.boost
            return Car(round(start + (end - start) * fraction), self.speed, self.ground,
                       self.wall, self.boosting, self.powerslide, self.demolished)
        return self


#: A player's car over a span: one state, or pieces ``(seconds, Car)`` one after another.
Plan: TypeAlias = Car | Sequence[tuple[float, Car]]
#: The team that last touched the ball over a span: one number, or pieces.
BallPlan: TypeAlias = int | Sequence[tuple[float, int]]


class Stream:
    """A Stats API stream being written: events, frozen ticks and live play."""

    def __init__(self, rate: int, players: Sequence[Player], *, clock: int = 300,
                 guid: str = GUID) -> None:
        self.rate = rate
        self.players = list(players)
        self.guid = guid
        self.messages: list[dict[str, Any]] = []
        self._start = clock * rate  # the clock, in ticks
        self._elapsed = 0  # live ticks so far
        self._shown = clock  # the last whole second the clock showed
        self._score = [0, 0]

    # -- writing ---------------------------------------------------------------------------

    def event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Any event, Data double encoded as on the wire."""
        body = {"MatchGuid": self.guid, **(data or {})}
        self.messages.append({"Event": name, "Data": json.dumps(body)})

    def goal(self, scorer: Player) -> None:
        """GoalScored for ``scorer``'s team (the team score goes up one tick before)."""
        self._score[scorer.team] += 1
        self.event("GoalScored", {
            "GoalSpeed": 90.5, "GoalTime": 12.0,
            "ImpactLocation": {"X": 0.0, "Y": 5120.0, "Z": 100.0},
            "Scorer": {"Name": scorer.name, "Shortcut": scorer.shortcut, "TeamNum": scorer.team},
            "BallLastTouch": {"Player": scorer.name, "Speed": 80.0},
        })

    def bogus_goal(self) -> None:
        """The second GoalScored the game fires when the goal replay ends."""
        self.event("GoalScored", {"GoalSpeed": 0, "GoalTime": 0,
                                  "Scorer": {"Name": "", "Shortcut": 0, "TeamNum": 0}})

    def demolish(self, attacker: Player, victim: Player) -> None:
        """StatfeedEvent Demolish: MainTarget destroyed SecondaryTarget."""
        self.event("StatfeedEvent", {
            "EventName": "Demolish", "Type": "Demolition",
            "MainTarget": {"Name": attacker.name, "Shortcut": attacker.shortcut,
                           "TeamNum": attacker.team},
            "SecondaryTarget": {"Name": victim.name, "Shortcut": victim.shortcut,
                                "TeamNum": victim.team},
        })

    def play(self, seconds: float, cars: Mapping[Player, Plan], ball: BallPlan = 255) -> None:
        """Live play: the clock runs (ClockUpdatedSeconds as each new second shows)."""
        for i in range(self._ticks(seconds)):
            shown = self.time_seconds
            if shown != self._shown:
                self._shown = shown
                self.event("ClockUpdatedSeconds", {"TimeSeconds": shown, "bOvertime": False})
            self._state(i / self.rate, seconds, cars, ball, replay=False, clock=shown)
            self._elapsed += 1

    def still(self, seconds: float, cars: Mapping[Player, Plan], ball: BallPlan = 255, *,
              replay: bool = False, clock: int | None = None) -> None:
        """Ticks while the clock stands (countdown, celebration, pause; a replay's own clock)."""
        for i in range(self._ticks(seconds)):
            shown = self.time_seconds if clock is None else clock
            self._state(i / self.rate, seconds, cars, ball, replay=replay, clock=shown)

    @property
    def time_seconds(self) -> int:
        """What the clock shows: the remaining seconds, rounded up (regulation)."""
        remaining = self._start - self._elapsed
        return -(-remaining // self.rate)

    # -- pieces ----------------------------------------------------------------------------

    def _ticks(self, seconds: float) -> int:
        ticks = round(seconds * self.rate)
        if abs(ticks - seconds * self.rate) > 1e-6:
            raise ValueError(f"{seconds} s is not a whole number of ticks at {self.rate} Hz")
        return ticks

    def _state(self, t: float, span: float, cars: Mapping[Player, Plan], ball: BallPlan, *,
               replay: bool, clock: int) -> None:
        players = []
        for player in self.players:
            line: dict[str, Any] = {
                "Name": player.name, "PrimaryId": player.primary_id,
                "Shortcut": player.shortcut, "TeamNum": player.team, "Score": 0, "Goals": 0,
                "Shots": 0, "Assists": 0, "Saves": 0, "Touches": 0, "CarTouches": 0, "Demos": 0,
            }
            plan = cars.get(player)
            if player.visible and plan is not None:
                line.update(_car_fields(_piece(plan, t, span)))
            players.append(line)
        self.messages.append({"Event": "UpdateState", "Data": json.dumps({
            "MatchGuid": self.guid,
            "Players": players,
            "Game": {
                "Teams": [{"Name": "Blue", "TeamNum": 0, "Score": self._score[0]},
                          {"Name": "Orange", "TeamNum": 1, "Score": self._score[1]}],
                "TimeSeconds": clock, "bOvertime": False,
                "Ball": {"Speed": 10.0, "TeamNum": _piece(ball, t, span)},
                "bReplay": replay, "bHasWinner": False, "Winner": "", "Arena": "Stadium_P",
            },
        })})


def _piece(plan: Any, t: float, span: float) -> Any:
    """The state a plan gives ``t`` seconds into its ``span`` (a Car at its point of a ramp)."""
    if not isinstance(plan, Sequence):
        return plan.at(t / span) if isinstance(plan, Car) else plan
    start = 0.0
    for seconds, state in plan:
        if t < start + seconds - 1e-9:
            return state.at((t - start) / seconds) if isinstance(state, Car) else state
        start += seconds
    raise ValueError(f"the plan ends before {t} s")


def _car_fields(car: Car) -> dict[str, Any]:
    """A visible car's keys, leaving zero and false values out as the game does."""
    if car.demolished:
        return {"bDemolished": True}
    fields: dict[str, Any] = {"bHasCar": True}
    boost = car.boost if not isinstance(car.boost, tuple) else car.boost[0]
    if boost:
        fields["Boost"] = int(boost)
    if car.speed:
        fields["Speed"] = car.speed * KMH_PER_UU_S
    for key, flag in (("bBoosting", car.boosting), ("bOnGround", car.ground),
                      ("bOnWall", car.wall), ("bPowersliding", car.powerslide),
                      ("bSupersonic", car.speed >= 2200)):
        if flag:
            fields[key] = True
    return fields


# -- the scripted match ------------------------------------------------------------------------

BLUE = Player("Blue One", "Steam|76561190000000001|0", team=0, shortcut=1)
ORANGE = Player("Orange One", "Epic|0123456789abcdef0123456789abcdef|0", team=1, shortcut=2)
#: Seen from Blue's seat... never: only scoreboard fields, yet named by the statfeed.
GHOST = Player("Ghost", "Epic|fedcba9876543210fedcba9876543210|0", team=0, shortcut=3,
               visible=False)
PLAYERS = (BLUE, ORANGE, GHOST)


def kickoff(stream: Stream, *, first: bool) -> None:
    """Countdown with cars frozen at 33 boost, then RoundStarted."""
    if first:
        stream.event("MatchCreated")
        stream.event("MatchInitialized")
        # Before the countdown: not play.
        stream.still(1.0, {BLUE: Car(boost=0), ORANGE: Car(boost=0)})
    stream.event("CountdownBegin")
    stream.still(3.0, {BLUE: Car(boost=33), ORANGE: Car(boost=33)})
    stream.event("RoundStarted")


def middle(stream: Stream, *, demolished_ghost: bool = False) -> None:
    """Spans A to D: 8 s of live play, one demolition (Orange on Blue)."""
    # A, 2 s: Blue slow on 33; Orange boosts 33 -> 25 at boost speed; ball nobody's, then Blue's.
    stream.play(2.0, {BLUE: Car(33, 1000), ORANGE: Car((33, 25), 1500, boosting=True)},
                ball=[(0.5, 255), (1.5, 0)])
    # B, 1 s: Blue supersonic, boosting, takes a small pad (+12); Orange in the air.
    stream.play(1.0, {BLUE: [(0.5, Car(33, 2300, boosting=True)),
                             (0.5, Car(45, 2300, boosting=True))],
                      ORANGE: Car(25, 1500, ground=False)}, ball=1)
    # C, 1 s: Blue on the wall, then a powerslide and a big pad (45 -> 100);
    # Orange empties its boost (25 -> 0), stands, powerslides twice.
    stream.play(1.0, {BLUE: [(0.5, Car(45, 500, ground=False, wall=True)),
                             (0.5, Car(100, 500, powerslide=True))],
                      ORANGE: [(0.2, Car(0, 0, powerslide=True)), (0.3, Car(0, 0)),
                               (0.2, Car(0, 0, powerslide=True)), (0.3, Car(0, 0))]}, ball=0)
    # D1, 3 s: Orange demolishes Blue; Blue is destroyed; Orange supersonic on no boost.
    stream.demolish(ORANGE, BLUE)
    if demolished_ghost:
        stream.demolish(ORANGE, GHOST)
    stream.play(3.0, {BLUE: Car(33, 0, demolished=True), ORANGE: Car(0, 2250)}, ball=1)
    # D2, 1 s: Blue respawns at 33 (not collected), falls 0.5 s; Orange takes a small pad.
    stream.play(1.0, {BLUE: [(0.5, Car(33, 0, ground=False)), (0.5, Car(33, 0))],
                      ORANGE: [(0.5, Car(0, 2250)), (0.5, Car(12, 2250))]}, ball=1)


def goal_break(stream: Stream, scorer: Player) -> None:
    """A goal, its celebration, replay, bogus echo and the next kickoff (none of it play)."""
    stream.goal(scorer)
    # The celebration: cars move and Blue burns its boost, the clock stands.
    stream.still(2.0, {BLUE: Car((33, 0), 1500, boosting=True), ORANGE: Car(12, 1500)}, ball=1)
    stream.event("GoalReplayStart")
    # The replay: its own clock, cars as they were.
    stream.still(3.0, {BLUE: Car(45, 2300), ORANGE: Car(0, 2250)}, ball=1, replay=True,
                 clock=stream.time_seconds + 4)
    stream.event("GoalReplayWillEnd")
    stream.bogus_goal()
    stream.event("GoalReplayEnd")
    kickoff(stream, first=False)


def scripted_match(rate: int) -> list[dict[str, Any]]:
    """11.5 s of live play among 24.5 s of stream; the figures are in test_derived.py."""
    stream = Stream(rate, PLAYERS)
    kickoff(stream, first=True)
    middle(stream)
    # E1, 0.5 s: both slow; Orange scores half way through the 292 second.
    stream.play(0.5, {BLUE: Car(33, 1000), ORANGE: Car(12, 1000)}, ball=1)
    goal_break(stream, ORANGE)
    # E2, 1.5 s (the rest of the 292 second, and 291): Blue uses 13 boost (33 -> 20).
    stream.play(1.5, {BLUE: [(0.5, Car(33, 1000)), (1.0, Car(20, 1000))],
                      ORANGE: Car(33, 1000)}, ball=[(0.5, 255), (1.0, 0)])
    # G, 1 s with a 2 s pause in the middle; Orange demolishes the unseen Ghost.
    stream.play(0.5, {BLUE: Car(20, 1000), ORANGE: Car(33, 1000)}, ball=0)
    stream.demolish(ORANGE, GHOST)
    stream.event("MatchPaused")
    stream.still(2.0, {BLUE: Car(20, 0), ORANGE: Car(33, 0)}, ball=0)
    stream.event("MatchUnpaused")
    stream.play(0.5, {BLUE: Car(20, 1000), ORANGE: Car(33, 1000)}, ball=0)
    # End, 0.5 s: the match ends half way through the 289 second.
    stream.play(0.5, {BLUE: Car(20, 1000), ORANGE: Car(33, 1000)}, ball=0)
    stream.event("MatchEnded", {"WinnerTeamNum": 1})
    stream.event("MatchDestroyed")
    return stream.messages


def long_match(rate: int, *, rounds: int = 30) -> list[dict[str, Any]]:
    """About five minutes: ``rounds`` times the 8 s middle, a goal after every fifth."""
    stream = Stream(rate, PLAYERS, clock=300)
    kickoff(stream, first=True)
    for n in range(1, rounds + 1):
        middle(stream, demolished_ghost=n % 3 == 0)
        if n % 5 == 0 and n < rounds:
            stream.play(0.5, {BLUE: Car(33, 1000), ORANGE: Car(12, 1000)}, ball=1)
            goal_break(stream, BLUE if n % 10 else ORANGE)
            stream.play(0.5, {BLUE: Car(33, 1000), ORANGE: Car(33, 1000)}, ball=0)
    stream.event("MatchEnded", {"WinnerTeamNum": 0})
    return stream.messages
