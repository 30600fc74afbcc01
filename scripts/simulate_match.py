#!/usr/bin/env python3
"""Write a simulated Rocket League match as the game's Stats API sends it (JSON lines).

For trying the dashboard without the game, and for tests that need a match that looks
played: cars that boost, take pads, go supersonic, fly and land on walls; shots, saves,
goals with assists, demolitions, the goal replay and its bogus second GoalScored, the
kickoff countdown, overtime on a tie. Seeded: the same arguments give the same bytes.

    scripts/simulate_match.py --seed 7 --size 3 --minutes 5 > match.jsonl
    collector replay --fast --to http://127.0.0.1:8765 match.jsonl     # into history
    collector replay --rate 32 --to http://127.0.0.1:8765 match.jsonl  # as if live

Each line is ``{"Event": NAME, "Data": "<JSON text>"}`` (Data double encoded, zero and
false values left out, as on the wire). ``--view player`` sends car fields only for the
first player's team, as the game does from a player's seat; the default is a
spectator's view (every car).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

KMH_PER_UU_S = 0.036
SUPERSONIC_UU_S = 2200.0
MAX_UU_S = 2300.0
NAMES = ["Zephyr", "nickm", "Zone Killa", "Kaktus", "Mira", "turbo_tom", "Lumen", "Okapi",
         "Vex", "Sunny D", "Grizz", "Piccolo"]
ARENAS = ["Stadium_P", "cs_p", "EuroStadium_Night_P", "UtopiaStadium_P", "Park_P",
          "Wasteland_S_P", "NeoTokyo_Standard_P", "TrainStation_P"]
COLORS = [("1873FF", "E5E5E5"), ("C26418", "E5E5E5")]


@dataclass
class Car:
    name: str
    primary_id: str
    team: int
    shortcut: int
    boost: float = 33.0
    speed: float = 0.0
    target: float = 1200.0
    air: float = 0.0  # seconds left in the air
    wall: float = 0.0  # seconds left on a wall
    slide: float = 0.0
    boosting: float = 0.0
    demolished: float = 0.0
    line: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("Score", "Goals", "Shots", "Assists", "Saves", "Touches", "CarTouches", "Demos"), 0))


def primary_id(name: str) -> str:
    """The same account for the same name in every match (sessions and trends need it)."""
    digest = hashlib.sha256(name.encode()).digest()
    if digest[0] % 2:
        return f"Steam|7656119{int.from_bytes(digest[1:6], 'big') % 10**10:010d}|0"
    return f"Epic|{digest[1:17].hex()}|0"


class Match:
    def __init__(self, seed: int, size: int, minutes: float, rate: int, view: str,
                 names: list[str] | None) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.view = view
        self.guid = f"{self.rng.getrandbits(128):032X}"
        self.arena = self.rng.choice(ARENAS)
        pool = names or self.rng.sample(NAMES, 2 * size)
        self.cars = [
            Car(name, primary_id(name), team=i // size, shortcut=i + 1)
            for i, name in enumerate(pool[: 2 * size])
        ]
        self.clock = round(minutes * 60) * rate  # ticks left
        self.overtime = False
        self.score = [0, 0]
        self.ball_team = 255
        self.lines: list[str] = []

    # -- the wire --------------------------------------------------------------------------

    def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        body = {"MatchGuid": self.guid, **(data or {})}
        self.lines.append(json.dumps({"Event": name, "Data": json.dumps(body)}))

    def seconds_shown(self) -> int:
        return -(-self.clock // self.rate) if not self.overtime else self.clock // self.rate

    def state(self, *, replay: bool = False, winner: int | None = None) -> None:
        players = []
        for car in self.cars:
            line: dict[str, Any] = {"Name": car.name, "PrimaryId": car.primary_id,
                                    "Shortcut": car.shortcut, "TeamNum": car.team,
                                    **car.line}
            if self.view == "spectator" or car.team == self.cars[0].team:
                line["bHasCar"] = True
                line.update(self._car_fields(car))
            players.append({k: v for k, v in line.items() if v not in (0, False)} | {
                "TeamNum": car.team, "Name": car.name})
        game: dict[str, Any] = {
            "Teams": [{"Name": team, "TeamNum": num, "Score": self.score[num],
                       "ColorPrimary": COLORS[num][0], "ColorSecondary": COLORS[num][1]}
                      for num, team in enumerate(("Blue", "Orange"))],
            "TimeSeconds": self.seconds_shown(), "bOvertime": self.overtime,
            "Ball": {"Speed": round(self.rng.uniform(0, 90), 2), "TeamNum": self.ball_team},
            "bReplay": replay, "bHasWinner": winner is not None,
            "Winner": "" if winner is None else ("Blue", "Orange")[winner],
            "Arena": self.arena,
        }
        self.event("UpdateState", {"Players": players, "Game": game})

    def _car_fields(self, car: Car) -> dict[str, Any]:
        if car.demolished > 0:
            return {"bDemolished": True}
        return {
            "Boost": round(car.boost), "Speed": round(car.speed * KMH_PER_UU_S, 3),
            "bBoosting": car.boosting > 0, "bOnGround": car.air <= 0,
            "bOnWall": car.wall > 0, "bPowersliding": car.slide > 0,
            "bSupersonic": car.speed >= SUPERSONIC_UU_S,
        }

    # -- the play --------------------------------------------------------------------------

    def move(self, dt: float) -> None:
        rng = self.rng
        for car in self.cars:
            if car.demolished > 0:
                car.demolished -= dt
                if car.demolished <= 0:
                    car.boost, car.speed = 33.0, 0.0  # respawn
                continue
            if rng.random() < dt / 1.5:
                car.target = rng.choice([300, 900, 1400, 1800, 2250, 2300])
            if car.boosting <= 0 and car.boost > 0 and rng.random() < dt / 2.5:
                car.boosting = rng.uniform(0.3, 1.6)
            if car.boosting > 0:
                car.boosting -= dt
                car.boost = max(0.0, car.boost - 33.3 * dt)
                if car.boost <= 0:
                    car.boosting = 0.0
                car.speed = min(MAX_UU_S, car.speed + 990 * dt)
            else:
                car.speed += (car.target - car.speed) * min(1.0, 1.4 * dt)
            if rng.random() < dt / 4:
                car.boost = min(100.0, car.boost + 12)  # a small pad
            if rng.random() < dt / 14:
                car.boost = 100.0  # a big one
            for attr, rate, low, high in (("air", 7, 0.4, 2.2), ("wall", 14, 0.5, 1.8),
                                          ("slide", 9, 0.2, 0.6)):
                left = getattr(car, attr)
                if left > 0:
                    setattr(car, attr, left - dt)
                elif rng.random() < dt / rate:
                    setattr(car, attr, rng.uniform(low, high))

    def touch(self) -> Car:
        car = self.rng.choice([c for c in self.cars if c.demolished <= 0] or self.cars)
        car.line["Touches"] += 1
        car.line["Score"] += 2
        self.ball_team = car.team
        return car

    def statfeed(self, name: str, main: Car, other: Car | None = None) -> None:
        data: dict[str, Any] = {"EventName": name, "Type": name,
                                "MainTarget": {"Name": main.name, "Shortcut": main.shortcut,
                                               "TeamNum": main.team}}
        if other is not None:
            data["SecondaryTarget"] = {"Name": other.name, "Shortcut": other.shortcut,
                                       "TeamNum": other.team}
        self.event("StatfeedEvent", data)

    def play(self, seconds: float) -> str | None:
        """Live play until a goal ("goal"), the end of regulation ("time") or ``seconds``."""
        dt = 1 / self.rate
        for _ in range(round(seconds * self.rate)):
            shown = self.seconds_shown()
            self.clock += 1 if self.overtime else -1
            if self.seconds_shown() != shown:
                self.event("ClockUpdatedSeconds",
                           {"TimeSeconds": self.seconds_shown(), "bOvertime": self.overtime})
            self.move(dt)
            rng = self.rng
            if rng.random() < dt / 1.2:
                self.touch()
            if rng.random() < dt / 25:
                self._demo()
            if rng.random() < dt / 14:
                shooter = self.touch()
                shooter.line["Shots"] += 1
                shooter.line["Score"] += 20
                self.statfeed("Shot", shooter)
                if rng.random() < 0.25:
                    self.state()
                    self._goal(shooter)
                    return "goal"
                keeper = rng.choice([c for c in self.cars if c.team != shooter.team])
                if rng.random() < 0.55:
                    keeper.line["Saves"] += 1
                    keeper.line["Score"] += 50
                    self.ball_team = keeper.team
                    self.statfeed("Save", keeper)
            self.state()
            if not self.overtime and self.clock <= 0:
                return "time"
        return None

    def _demo(self) -> None:
        attacker = self.rng.choice([c for c in self.cars if c.demolished <= 0])
        victims = [c for c in self.cars if c.team != attacker.team and c.demolished <= 0]
        if not victims or attacker.speed < 1800:
            return
        victim = self.rng.choice(victims)
        attacker.line["Demos"] += 1
        attacker.line["Score"] += 25
        victim.demolished = 3.0
        self.statfeed("Demolish", attacker, victim)

    def _goal(self, scorer: Car) -> None:
        rng = self.rng
        mates = [c for c in self.cars if c.team == scorer.team and c is not scorer]
        assister = rng.choice(mates) if mates and rng.random() < 0.6 else None
        scorer.line["Goals"] += 1
        scorer.line["Score"] += 100
        self.score[scorer.team] += 1
        self.state()  # the team score goes up one message before GoalScored
        speed = round(rng.uniform(40, 125), 2)
        data: dict[str, Any] = {
            "GoalSpeed": speed, "GoalTime": round(rng.uniform(3, 40), 2),
            "ImpactLocation": {"X": round(rng.uniform(-800, 800), 1),
                               "Y": 5120.0 if scorer.team == 0 else -5120.0,
                               "Z": round(rng.uniform(95, 600), 1)},
            "Scorer": {"Name": scorer.name, "Shortcut": scorer.shortcut, "TeamNum": scorer.team},
            "BallLastTouch": {"Player": scorer.name, "Speed": speed},
        }
        if assister is not None:
            assister.line["Assists"] += 1
            assister.line["Score"] += 50
            data["Assister"] = {"Name": assister.name, "Shortcut": assister.shortcut,
                                "TeamNum": assister.team}
            self.statfeed("Assist", assister)
        self.event("GoalScored", data)
        self.statfeed("Goal", scorer)

    def still(self, seconds: float, *, replay: bool = False) -> None:
        for _ in range(round(seconds * self.rate)):
            self.move(1 / self.rate) if not replay else None
            self.state(replay=replay)

    def kickoff(self) -> None:
        self.event("CountdownBegin")
        for car in self.cars:
            car.boost, car.speed, car.boosting, car.demolished = 33.0, 0.0, 0.0, 0.0
            car.air = car.wall = car.slide = 0.0
        for _ in range(3 * self.rate):
            self.state()
        self.ball_team = 255
        self.event("RoundStarted")

    def run(self) -> list[str]:
        self.event("MatchCreated")
        self.event("MatchInitialized")
        self.kickoff()
        while True:
            why = self.play(10_000)
            if why == "goal":
                if self.overtime:
                    break
                self.still(2.5)
                self.event("GoalReplayStart")
                self.still(3.0, replay=True)
                self.event("GoalReplayWillEnd")
                self.event("GoalScored", {"GoalSpeed": 0, "GoalTime": 0,
                                          "Scorer": {"Name": "", "Shortcut": 0, "TeamNum": 0}})
                self.event("GoalReplayEnd")
                if not self.overtime and self.clock <= 0:
                    break
                self.kickoff()
            elif why == "time":
                if self.score[0] != self.score[1]:
                    break
                self.overtime = True
                self.clock = 0
                self.kickoff()
        winner = 0 if self.score[0] > self.score[1] else 1
        self.state(winner=winner)
        self.event("MatchEnded", {"WinnerTeamNum": winner})
        self.event("PodiumStart")
        self.event("MatchDestroyed")
        return self.lines


def simulate(seed: int = 1, size: int = 3, minutes: float = 5.0, rate: int = 30,
             view: str = "spectator", names: list[str] | None = None) -> list[str]:
    """The match's lines (JSON text, one message each)."""
    return Match(seed, size, minutes, rate, view, names).run()


def _lines(args: argparse.Namespace) -> Iterator[str]:
    names = args.names.split(",") if args.names else None
    yield from simulate(args.seed, args.size, args.minutes, args.rate, args.view, names)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, choices=(1, 2, 3), default=3, help="players a team")
    parser.add_argument("--minutes", type=float, default=5.0, help="regulation time")
    parser.add_argument("--rate", type=int, default=30, help="UpdateState per second")
    parser.add_argument("--view", choices=("spectator", "player"), default="spectator")
    parser.add_argument("--names", help="comma-separated player names, blue team first")
    args = parser.parse_args(argv)
    if args.names and len(args.names.split(",")) < 2 * args.size:
        parser.error(f"--names: {2 * args.size} names expected")
    for line in _lines(args):
        out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
