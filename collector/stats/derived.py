"""Statistics derived from the Stats API's ticks: per player and per team, in one match.

A pure, deterministic engine: :class:`MatchStats` is fed the typed events of one match
(:func:`collector.stats.formats.parse`) in order and keeps everything it needs in a
JSON-serialisable state (:meth:`MatchStats.to_state`, :meth:`MatchStats.from_state`), so
the accumulators can be committed together with the events that built them.

Time comes from the game's clock, never from arrival times (the message rate is not
sent). The ticks (UpdateState messages) of one game second are gathered; when the clock
shows the next second, each of the ``n`` ticks of the second that ended weighs
``1/n`` s. A second whose beginning or end was not seen (the first one of a recording
that starts in the middle of play, the last one when play stops for good, one cut by a
jump of the clock) weighs ``1/r`` s a tick, ``r`` being the ticks per second measured on
the whole seconds of the match. docs/statistics.md, "Derived statistics", gives every
definition and its edges.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias

from collector.stats import formats

Value: TypeAlias = float | int | None
Stats: TypeAlias = dict[str, Value]
#: A car as last seen: the API's ``car`` object (keys CAR_KEYS).
Car: TypeAlias = dict[str, float | int | bool]
_Phase: TypeAlias = Literal["unknown", "live", "stopped"]

STATE_VERSION: Final = 1
KMH_PER_UU_S: Final = 0.036  # uu/s = km/h / 0.036
SLOW_BELOW: Final = 1410.0  # uu/s
SUPERSONIC_FROM: Final = 2200.0  # uu/s
#: The rate assumed before the match has shown one whole second (30, 60 or 120 are
#: usual; 60 is the most common setting).
FALLBACK_RATE: Final = 60.0
#: A second with fewer or more ticks than this share of the measured rate is not a
#: whole second (a clock that stood still, a kickoff seen half): it weighs 1/r a tick.
_WHOLE_MIN: Final = 0.5
_WHOLE_MAX: Final = 1.5

#: Seconds, weighted per tick (a tick adds 1 before the second's weight is applied).
TIME_KEYS: Final = (
    "tracked_s",
    "time_zero_boost_s", "time_full_boost_s",
    "time_boost_0_25_s", "time_boost_25_50_s", "time_boost_50_75_s", "time_boost_75_100_s",
    "time_boosting_s",
    "time_slow_s", "time_boost_speed_s", "time_supersonic_s",
    "time_ground_s", "time_wall_s", "time_air_s",
    "time_powerslide_s",
    "time_demolished_s",
)
#: Weighted sums: boost * seconds (for boost_avg) and uu/s * seconds (the distance).
_WEIGHTED: Final = ("boost_time", "distance")
_TICK_KEYS: Final = TIME_KEYS + _WEIGHTED
#: Counted once, whatever a tick weighs.
_COUNT_KEYS: Final = ("boost_collected", "boost_used", "powerslide_count", "seen")
#: Every key a player's statistics carry, in this order.
PLAYER_KEYS: Final = (
    "tracked_s", "boost_avg", "boost_collected", "boost_used", "bpm", "bcpm",
    "time_zero_boost_s", "time_full_boost_s",
    "time_boost_0_25_s", "time_boost_25_50_s", "time_boost_50_75_s", "time_boost_75_100_s",
    "time_boosting_s", "speed_avg", "distance",
    "time_slow_s", "time_boost_speed_s", "time_supersonic_s",
    "time_ground_s", "time_wall_s", "time_air_s",
    "time_powerslide_s", "powerslide_count",
    "demos_inflicted", "demos_taken", "time_demolished_s",
)
_AVERAGES: Final = ("boost_avg", "speed_avg")
_PER_MINUTE: Final = {"bpm": "boost_collected", "bcpm": "boost_used"}
_DEMO_KEYS: Final = ("demos_inflicted", "demos_taken")
#: The keys of a car as last seen (:meth:`MatchStats.cars`), in this order.
CAR_KEYS: Final = ("boost", "speed", "supersonic", "boosting", "on_ground", "on_wall",
                   "powersliding", "demolished")


_TENTHS: Final = frozenset({"distance", "speed_avg"})


def rounded(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A player's derived statistics as stored and shown: 0.1 for uu and uu/s, else 0.01."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, float):
            value = round(value, 1 if key in _TENTHS else 2)
        out[key] = value
    return out


def player_key(line: formats.PlayerLine) -> str:
    """A player is their account id; bots and id-less players are known by name.

    The same rule as the scoreboard's (``collector.stats.apply``).
    """
    return line.primary_id if line.primary_id is not None else f"name:{line.name}"


def _bucket() -> dict[str, Any]:
    """Ticks gathered but not yet weighed: per player sums, per team ball ticks."""
    return {"ticks": 0, "players": {}, "counts": {}, "teams": {}}


def _new_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "phase": "unknown",  # unknown: no event has said yet whether play is on
        "paused": False,
        "ended": False,
        "kickoff": False,  # RoundStarted seen, no live tick since
        "frozen_clock": None,  # the clock of the last tick seen while play was stopped
        "open": None,  # the game second being gathered: {clock, start_seen, bucket}
        "partial": _bucket(),  # ticks of seconds not seen whole, weighed at 1/r on reading
        "whole_ticks": 0,
        "whole_seconds": 0,
        "max_ticks": 0,
        "totals": {"players": {}, "counts": {}, "teams": {}, "duration": 0.0},
        "previous": {},  # per player [boost, powersliding] of the last live tick with a car
        "roster": {},  # player key -> [name, team]
        "teams": [],
        "demos": [],  # [name, team, primary id, inflicted, taken] as the statfeed names them
        "stale": 0,  # live ticks behind the clock, skipped
    }


class MatchStats:
    """Tick-derived statistics of one match; feed it the match's events in order."""

    def __init__(self) -> None:
        self._s: dict[str, Any] = _new_state()
        #: The player lines of the latest snapshot (kept as they came: 60-120 a second,
        #: turned into cars only when read); None after from_state until the next one.
        self._latest: tuple[formats.PlayerLine, ...] | None = ()
        #: The cars a restored state carried (see cars()), while _latest is None.
        self._restored_cars: dict[str, Car | None] = {}

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the engine knows, as JSON-serialisable data (a deep copy)."""
        state = copy.deepcopy(self._s)
        state["cars"] = self.cars()
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MatchStats:
        """An engine that goes on exactly where the one that wrote ``state`` stopped.

        A state written before the cars were kept (no ``"cars"``) loads with no car
        known until the next snapshot.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown derived-statistics state version {state.get('version')!r}")
        stats = cls()
        stats._s = copy.deepcopy(dict(state))
        cars = stats._s.pop("cars", None)
        stats._latest = None
        stats._restored_cars = {
            str(key): _restored_car(car)
            for key, car in (cars.items() if isinstance(cars, dict) else ())
        }
        return stats

    def cars(self) -> dict[str, Car | None]:
        """Each player's car as the latest snapshot showed it, by player key: None for a
        player that snapshot did not show (an opponent seen from a player's seat, a
        format without car state). Empty once the match is over."""
        if self._s["ended"]:
            return {}
        if self._latest is None:
            return {key: None if car is None else dict(car)
                    for key, car in self._restored_cars.items()}
        return {player_key(line): _car(line.car) for line in self._latest}

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, event: formats.Event) -> None:
        """Take one event of the match (any kind; those that do not matter are ignored)."""
        s = self._s
        if isinstance(event, formats.Demolition):
            self._demolition(event)  # the statfeed counts whenever it comes
        if s["ended"]:
            return
        if isinstance(event, formats.Snapshot):
            self._snapshot(event)
        elif isinstance(event, formats.Goal):
            self._stop(confirm=True)  # a goal ends live play: what came before was play
        elif isinstance(event, formats.Phase):
            self._phase(event.kind)
        elif isinstance(event, formats.Clock):
            if event.time_seconds is not None and s["phase"] != "stopped" and not s["paused"]:
                self._clock((event.time_seconds, event.overtime))
        elif isinstance(event, formats.MatchStarted):
            self._stop(confirm=False)
        elif isinstance(event, formats.MatchEnded | formats.MatchClosed):
            self.close()

    def close(self) -> None:
        """The match is over: weigh the last second, seen only in part; feed nothing more."""
        s = self._s
        if s["ended"]:
            return
        if s["phase"] == "unknown":
            s["open"] = None  # the clock never ran: nothing showed play
        elif s["open"] is not None:
            self._close_second(whole=False)
        s["ended"] = True
        s["previous"] = {}

    def _phase(self, kind: formats.PhaseKind) -> None:
        s = self._s
        if kind == "round_started":
            if s["phase"] == "unknown":
                s["open"] = None  # what came before the kickoff was not play
            s["phase"] = "live"
            s["kickoff"] = True
            s["previous"] = {}
        elif kind == "paused":
            s["paused"] = True
            s["previous"] = {}
        elif kind == "unpaused":
            s["paused"] = False
        else:
            self._stop(confirm=False)

    def _stop(self, *, confirm: bool) -> None:
        """Play stops; the second under way stays open (play resumes in it after a goal)."""
        s = self._s
        if s["phase"] == "unknown" and not confirm:
            s["open"] = None  # the clock never ran: the ticks so far were not play
        s["phase"] = "stopped"
        s["kickoff"] = False
        s["frozen_clock"] = None
        s["previous"] = {}

    def _demolition(self, event: formats.Demolition) -> None:
        """Count as the statfeed names them; matched to players on reading."""
        demos: list[list[Any]] = self._s["demos"]
        for target, column in (
            ([event.attacker, event.attacker_team, event.attacker_id], 3),
            ([event.victim, event.victim_team, event.victim_id], 4),
        ):
            entry = next((e for e in demos if e[:3] == target), None)
            if entry is None:
                entry = [*target, 0, 0]
                demos.append(entry)
            entry[column] += 1

    def _demos(self) -> dict[str, tuple[int, int]]:
        """Demolitions inflicted and taken per player key."""
        out: dict[str, tuple[int, int]] = {}
        for name, team, primary_id, inflicted, taken in self._s["demos"]:
            key = self._target(name, team, primary_id)
            before = out.get(key, (0, 0))
            out[key] = (before[0] + inflicted, before[1] + taken)
        return out

    def _target(self, name: str, team: int | None, primary_id: str | None) -> str:
        """The key of a player the statfeed names (by name and team in the roster)."""
        if primary_id is not None:
            return primary_id
        roster: dict[str, list[Any]] = self._s["roster"]
        by_name = [key for key, (known, _) in roster.items() if known == name]
        same_team = [key for key in by_name if roster[key][1] == team]
        if same_team:
            return same_team[0]
        return by_name[0] if by_name else f"name:{name}"

    # -- ticks -----------------------------------------------------------------------------

    def _snapshot(self, snap: formats.Snapshot) -> None:
        s = self._s
        self._remember(snap)
        if snap.replay or s["paused"] or snap.time_seconds is None:
            if snap.replay and s["phase"] != "stopped":
                self._stop(confirm=False)  # a replay with no event before it
            if snap.replay or s["paused"]:
                s["previous"] = {}
            return
        clock = (snap.time_seconds, snap.overtime)
        if s["phase"] == "stopped":
            # Stopped, yet the clock moves: play is on (its RoundStarted never came).
            frozen = s["frozen_clock"]
            if frozen is None or not _adjacent(tuple(frozen), clock):
                s["frozen_clock"] = list(clock)
                return
            s["phase"] = "live"
            s["kickoff"] = True
        if not self._clock(clock):
            s["stale"] += 1
            return
        self._tick(snap)

    def _remember(self, snap: formats.Snapshot) -> None:
        self._latest = snap.players  # the cars, read when asked (cars())
        roster = self._s["roster"]
        for line in snap.players:
            roster[player_key(line)] = [line.name, line.team]
        teams = set(self._s["teams"])
        teams.update(t.num for t in snap.teams)
        teams.update(line.team for line in snap.players if line.team is not None)
        self._s["teams"] = sorted(team for team in teams if 0 <= team < 255)

    def _clock(self, clock: tuple[int, bool]) -> bool:
        """The clock shows ``clock``: end the second under way if it is another one.

        False when ``clock`` is behind the second under way (a stale message).
        """
        s = self._s
        current = s["open"]
        if current is None:
            s["open"] = {"clock": list(clock), "start_seen": s["kickoff"], "bucket": _bucket()}
            return True
        before = (current["clock"][0], current["clock"][1])
        if before == clock:
            return True
        if _order(clock) < _order(before):
            return False
        adjacent = _adjacent(before, clock)
        if s["phase"] == "unknown":
            s["phase"] = "live"  # the clock runs: the ticks gathered so far were play
        self._close_second(whole=adjacent and current["start_seen"])
        s["open"] = {
            "clock": list(clock), "start_seen": adjacent or s["kickoff"], "bucket": _bucket(),
        }
        return True

    def _close_second(self, *, whole: bool) -> None:
        s = self._s
        bucket = s["open"]["bucket"]
        s["open"] = None
        n = bucket["ticks"]
        s["max_ticks"] = max(s["max_ticks"], n)
        if whole and s["whole_seconds"]:
            rate = s["whole_ticks"] / s["whole_seconds"]
            whole = _WHOLE_MIN * rate <= n <= _WHOLE_MAX * rate
        totals = s["totals"]
        _add_counts(totals["counts"], bucket["counts"])
        if whole and n:
            weight = 1.0 / n
            _add_scaled(totals["players"], bucket["players"], weight)
            for team, ticks in bucket["teams"].items():
                totals["teams"][team] = totals["teams"].get(team, 0.0) + ticks * weight
            totals["duration"] += n * weight
            s["whole_ticks"] += n
            s["whole_seconds"] += 1
        else:
            _add_bucket(s["partial"], {**bucket, "counts": {}})  # counts went in above

    def _tick(self, snap: formats.Snapshot) -> None:
        """Gather one live tick into the second under way."""
        s = self._s
        s["kickoff"] = False
        bucket = s["open"]["bucket"]
        bucket["ticks"] += 1
        if snap.ball_team is not None and 0 <= snap.ball_team < 255:
            team = str(snap.ball_team)
            bucket["teams"][team] = bucket["teams"].get(team, 0) + 1
        previous = s["previous"]
        for line in snap.players:
            key = player_key(line)
            car = line.car
            if car is None:
                previous.pop(key, None)
                continue
            counts = bucket["counts"].setdefault(key, dict.fromkeys(_COUNT_KEYS, 0))
            sums = bucket["players"].setdefault(key, dict.fromkeys(_TICK_KEYS, 0))
            counts["seen"] += 1
            if car.demolished or not car.has_car:
                # The car does not exist: no car statistic, only time demolished.
                if car.demolished:
                    sums["time_demolished_s"] += 1
                previous.pop(key, None)
                continue
            _car_tick(sums, car)
            boost, sliding = car.boost, car.powersliding
            last = previous.get(key)
            if last is not None:
                delta = boost - last[0]
                if delta > 0:
                    counts["boost_collected"] += delta
                elif delta < 0:
                    counts["boost_used"] -= delta
            if sliding and (last is None or not last[1]):
                counts["powerslide_count"] += 1
            previous[key] = [boost, sliding]

    # -- reading ---------------------------------------------------------------------------

    def rate(self) -> float:
        """Ticks per game second, measured on the whole seconds seen so far."""
        s = self._s
        if s["whole_seconds"]:
            return float(s["whole_ticks"] / s["whole_seconds"])
        open_ticks = s["open"]["bucket"]["ticks"] if s["open"] is not None else 0
        return max(FALLBACK_RATE, float(s["max_ticks"]), float(open_ticks))

    def _view(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], float]:
        """Weighed sums so far: per player sums and counts, team ticks, duration.

        The second under way counts at 1/r a tick until it ends (not while it is unknown
        whether play is on at all).
        """
        s = self._s
        pending = copy.deepcopy(s["partial"])
        if s["open"] is not None and s["phase"] != "unknown":
            _add_bucket(pending, s["open"]["bucket"])
        weight = 1.0 / self.rate()
        totals = s["totals"]
        players = copy.deepcopy(totals["players"])
        _add_scaled(players, pending["players"], weight)
        counts = copy.deepcopy(totals["counts"])
        _add_counts(counts, pending["counts"])
        teams = dict(totals["teams"])
        for team, ticks in pending["teams"].items():
            teams[team] = teams.get(team, 0.0) + ticks * weight
        return players, counts, teams, totals["duration"] + pending["ticks"] * weight

    def players(self) -> dict[str, Stats]:
        """Each player's statistics so far (None for what the feed could not see)."""
        sums, counts, _, _ = self._view()
        demos = self._demos()
        keys = list(self._s["roster"]) + [key for key in demos if key not in self._s["roster"]]
        out: dict[str, Stats] = {}
        for key in keys:
            seen = counts.get(key, {}).get("seen", 0)
            stats = _player_stats(sums.get(key), counts.get(key)) if seen else {}
            inflicted, taken = demos.get(key, (0, 0))
            stats["demos_inflicted"], stats["demos_taken"] = inflicted, taken
            out[key] = {name: stats.get(name) for name in PLAYER_KEYS}
        return out

    def teams(self) -> dict[int, dict[str, float]]:
        """Each team's possession (live seconds with the ball last touched by it)."""
        _, _, teams, _ = self._view()
        numbers = set(self._s["teams"]) | {int(team) for team in teams}
        return {num: {"possession_s": teams.get(str(num), 0.0)} for num in sorted(numbers)}

    @property
    def duration_s(self) -> float:
        """Seconds of live play so far."""
        return self._view()[3]

    @property
    def stale(self) -> int:
        """Live ticks skipped because their clock was behind the second under way."""
        return int(self._s["stale"])


# -- helpers ---------------------------------------------------------------------------------


def _order(clock: tuple[int, bool]) -> tuple[int, int]:
    """Clocks in the order they come: regulation counts down, overtime up."""
    seconds, overtime = clock
    return (1, seconds) if overtime else (0, -seconds)


def _adjacent(before: tuple[Any, ...], after: tuple[int, bool]) -> bool:
    """The clock moved by exactly one second (within regulation or within overtime)."""
    first, second = _order((int(before[0]), bool(before[1]))), _order(after)
    return first[0] == second[0] and second[1] - first[1] == 1


def _car(car: formats.Car | None) -> Car | None:
    """A seen car as the API shows it: boost 0-100 whole, speed in uu/s to 0.1."""
    if car is None:
        return None
    return {
        "boost": round(car.boost), "speed": round(car.speed_kmh / KMH_PER_UU_S, 1),
        "supersonic": car.supersonic, "boosting": car.boosting, "on_ground": car.on_ground,
        "on_wall": car.on_wall, "powersliding": car.powersliding,
        "demolished": car.demolished,
    }


def _restored_car(value: Any) -> Car | None:
    """A car from a stored state, as _car wrote it; None for anything else."""
    if not isinstance(value, dict) or set(value) != set(CAR_KEYS):
        return None
    return {key: value[key] for key in CAR_KEYS}


def _car_tick(sums: dict[str, Any], car: formats.Car) -> None:
    boost = car.boost
    speed = car.speed_kmh / KMH_PER_UU_S
    sums["tracked_s"] += 1
    sums["boost_time"] += boost
    sums["distance"] += speed
    if boost <= 0:
        sums["time_zero_boost_s"] += 1
    if boost >= 100:
        sums["time_full_boost_s"] += 1
    band = ("time_boost_0_25_s" if boost < 25 else "time_boost_25_50_s" if boost < 50
            else "time_boost_50_75_s" if boost < 75 else "time_boost_75_100_s")
    sums[band] += 1
    if car.boosting:
        sums["time_boosting_s"] += 1
    speed_band = ("time_slow_s" if speed < SLOW_BELOW else "time_boost_speed_s"
                  if speed < SUPERSONIC_FROM else "time_supersonic_s")
    sums[speed_band] += 1
    place = "time_wall_s" if car.on_wall else "time_ground_s" if car.on_ground else "time_air_s"
    sums[place] += 1
    if car.powersliding:
        sums["time_powerslide_s"] += 1


def _add_scaled(into: dict[str, Any], sums: dict[str, Any], weight: float) -> None:
    for key, values in sums.items():
        target = into.setdefault(key, dict.fromkeys(_TICK_KEYS, 0.0))
        for name, value in values.items():
            target[name] += value * weight


def _add_counts(into: dict[str, Any], counts: dict[str, Any]) -> None:
    for key, values in counts.items():
        target = into.setdefault(key, dict.fromkeys(_COUNT_KEYS, 0))
        for name, value in values.items():
            target[name] += value


def _add_bucket(into: dict[str, Any], bucket: dict[str, Any]) -> None:
    into["ticks"] += bucket["ticks"]
    _add_counts(into["counts"], bucket["counts"])
    for key, values in bucket["players"].items():
        target = into["players"].setdefault(key, dict.fromkeys(_TICK_KEYS, 0))
        for name, value in values.items():
            target[name] += value
    for team, ticks in bucket["teams"].items():
        into["teams"][team] = into["teams"].get(team, 0) + ticks


def _player_stats(sums: dict[str, Any] | None, counts: dict[str, Any] | None) -> Stats:
    """The published figures of a player the feed saw, from weighed sums and counts."""
    sums = sums or dict.fromkeys(_TICK_KEYS, 0.0)
    counts = counts or dict.fromkeys(_COUNT_KEYS, 0)
    stats: Stats = {key: float(sums[key]) for key in TIME_KEYS}
    stats["distance"] = float(sums["distance"])
    for key in ("boost_collected", "boost_used"):
        stats[key] = float(counts[key])
    stats["powerslide_count"] = int(counts["powerslide_count"])
    weighted = {"boost_avg": float(sums["boost_time"]), "speed_avg": float(sums["distance"])}
    return _finish(stats, weighted)


def _finish(stats: Stats, weighted: Mapping[str, float]) -> Stats:
    """Averages and rates from the sums; None without a second of car seen.

    ``weighted`` holds, per average, its value * seconds summed (boost * s, uu).
    """
    tracked = stats.get("tracked_s")
    seconds = float(tracked) if isinstance(tracked, int | float) and tracked > 0 else None
    for average in _AVERAGES:
        stats[average] = None if seconds is None else weighted[average] / seconds
    for rate, total in _PER_MINUTE.items():
        value = stats.get(total)
        stats[rate] = (
            None if seconds is None or not isinstance(value, int | float)
            else value * 60.0 / seconds
        )
    return stats


# -- careers and sessions ----------------------------------------------------------------------


def aggregate(matches: Iterable[Mapping[str, Value]]) -> Stats:
    """Many matches' statistics as one: sums, time-weighted averages, rates from the sums.

    Times, counts, distance, boost collected and used, possession and duration are
    summed; ``boost_avg`` and ``speed_avg`` are weighted by ``tracked_s``; ``bpm`` and
    ``bcpm`` come from the summed boost and ``tracked_s``. A key is None only when no
    match had a number for it (the player was never seen).
    """
    sums: dict[str, float] = {}
    counted: set[str] = set()
    weighted = dict.fromkeys(_AVERAGES, 0.0)
    order: dict[str, None] = {}  # the keys as first seen (a dict: a list made it quadratic)
    for match in matches:
        tracked = match.get("tracked_s")
        for key, value in match.items():
            order.setdefault(key)
            if key in _PER_MINUTE or not isinstance(value, int | float):
                continue
            if key in _AVERAGES:
                if isinstance(tracked, int | float):
                    weighted[key] += value * tracked
                continue
            sums[key] = sums.get(key, 0) + value
            counted.add(key)
    out: Stats = {}
    for key in order:
        if key in counted:
            value = sums[key]
            out[key] = int(value) if key in ("powerslide_count", *_DEMO_KEYS) else float(value)
        else:
            out[key] = None
    if "tracked_s" in out:
        _finish(out, weighted)
    return out
