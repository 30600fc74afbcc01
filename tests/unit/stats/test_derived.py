"""collector.stats.derived: tick statistics against a synthetic match with known answers.

The scripted match (tests/support/synthetic.py) is 11.5 s of live play among a countdown,
a goal with its celebration, replay and bogus echo, a pause and a demolition. Its figures
below are worked out by hand from the script, span by span (A, B, C, D1, D2, E1, E2, G,
End); docs/statistics.md, "Derived statistics", gives the definitions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from collector.stats import formats
from collector.stats.derived import PLAYER_KEYS, MatchStats, Stats, aggregate
from tests.support import synthetic
from tests.support.paths import CAPTURE_JSONL
from tests.support.synthetic import BLUE, GHOST, ORANGE, Car, Stream

RATES = (30, 60, 120)
CAR_KEYS = [key for key in PLAYER_KEYS if key not in ("demos_inflicted", "demos_taken")]
NICKM = "Steam|76561197960409023|0"
ZONE_KILLA = "Epic|9dfa38bf97f9442997b464ea869eb96a|0"

# Blue: 8.5 s with a car, 3 s destroyed. Boost 33 (A 2 s, B 0.5, D2 1, E1 0.5, E2 0.5),
# 45 (B 0.5, C 0.5), 100 (C 0.5), 20 (E2 1, G 1, End 0.5). A small pad (+12) and a big
# one (45 -> 100): 67 collected; 33 -> 20 in E2: 13 used. The respawn at 33 after 100
# and the celebration's boost are not counted.
BLUE_BOOST_TIME = 33 * 2 + 33 * .5 + 45 * .5 + 45 * .5 + 100 * .5 + 33 + 33 * .5 + 33 * .5 \
    + 20 + 20 + 20 * .5
BLUE_STATS: Stats = {
    "tracked_s": 8.5, "boost_avg": BLUE_BOOST_TIME / 8.5,
    "boost_collected": 67.0, "boost_used": 13.0, "bpm": 67 * 60 / 8.5, "bcpm": 13 * 60 / 8.5,
    "time_zero_boost_s": 0.0, "time_full_boost_s": 0.5,
    "time_boost_0_25_s": 2.5, "time_boost_25_50_s": 5.5, "time_boost_50_75_s": 0.0,
    "time_boost_75_100_s": 0.5, "time_boosting_s": 1.0,
    # 1000 uu/s x 5 s, 2300 x 1, 500 x 1, 0 x 1.
    "speed_avg": 8300 / 8.5, "distance": 8300.0,
    "time_slow_s": 7.5, "time_boost_speed_s": 0.0, "time_supersonic_s": 1.0,
    "time_ground_s": 7.5, "time_wall_s": 0.5, "time_air_s": 0.5,
    "time_powerslide_s": 0.5, "powerslide_count": 1,
    "demos_inflicted": 0, "demos_taken": 1, "time_demolished_s": 3.0,
}
# Orange: 11.5 s with a car. A ramp 33 -> 25 (8 used) while boosting, 25 -> 0 in C (25
# used), a small pad in D2 (+12); the kickoff refill to 33 is not collected.
ORANGE_STATS: Stats = {
    "tracked_s": 11.5, "boost_collected": 12.0, "boost_used": 33.0,
    "bpm": 12 * 60 / 11.5, "bcpm": 33 * 60 / 11.5,
    "time_zero_boost_s": 4.5, "time_full_boost_s": 0.0,
    "time_boost_0_25_s": 5.5, "time_boost_25_50_s": 6.0, "time_boost_50_75_s": 0.0,
    "time_boost_75_100_s": 0.0, "time_boosting_s": 2.0,
    # 1500 uu/s x 3 s, 0 x 1, 2250 x 4, 1000 x 3.5.
    "speed_avg": 17000 / 11.5, "distance": 17000.0,
    "time_slow_s": 4.5, "time_boost_speed_s": 3.0, "time_supersonic_s": 4.0,
    "time_ground_s": 10.5, "time_wall_s": 0.0, "time_air_s": 1.0,
    "time_powerslide_s": 0.4, "powerslide_count": 2,
    "demos_inflicted": 2, "demos_taken": 0, "time_demolished_s": 0.0,
}
GHOST_STATS: Stats = dict.fromkeys(PLAYER_KEYS) | {"demos_inflicted": 0, "demos_taken": 1}


def orange_boost_avg(rate: int) -> float:
    """Orange's boost over time; span A is a ramp sampled at ``rate``, rounded as sent."""
    n = 2 * rate
    ramp = sum(round(33 - 8 * i / n) for i in range(n)) / rate
    return (ramp + 25 + 0 + 0 + 12 * .5 + 12 * .5 + 33 * 1.5 + 33 + 33 * .5) / 11.5


def events(messages: Iterable[dict[str, Any]]) -> list[formats.Event]:
    return [formats.parse(message) for message in messages]


def run(stream: Iterable[formats.Event]) -> MatchStats:
    stats = MatchStats()
    for event in stream:
        stats.feed(event)
    return stats


def approx(expected: Stats, *, rel: float = 1e-9) -> Any:
    return {key: None if value is None else pytest.approx(value, rel=rel, abs=1e-9)
            for key, value in expected.items()}


def is_update(message: dict[str, Any]) -> bool:
    return bool(message["Event"] == "UpdateState")


# -- the definitions, on the scripted match ----------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_the_scripted_match_gives_the_figures_worked_out_by_hand(rate: int) -> None:
    stats = run(events(synthetic.scripted_match(rate)))
    players = stats.players()
    assert list(players) == [BLUE.primary_id, ORANGE.primary_id, GHOST.primary_id]
    assert players[BLUE.primary_id] == approx(BLUE_STATS)
    assert players[ORANGE.primary_id] == approx(
        ORANGE_STATS | {"boost_avg": orange_boost_avg(rate)})
    assert players[GHOST.primary_id] == GHOST_STATS
    assert stats.duration_s == pytest.approx(11.5)
    # Blue's ball: A 1.5 + C 1 + E2 1 + G 1 + End 0.5; Orange's: B 1 + D 4 + E1 0.5;
    # nobody's: 1 s (A and the kickoff of E2).
    assert stats.teams() == {0: {"possession_s": pytest.approx(5.0)},
                             1: {"possession_s": pytest.approx(5.5)}}


def test_the_same_game_at_30_60_and_120_hz_gives_the_same_figures() -> None:
    results = [run(events(synthetic.scripted_match(rate))) for rate in RATES]
    first = results[0]
    for other in results[1:]:
        for key, line in first.players().items():
            expected = dict(line)
            if key == ORANGE.primary_id:
                # The ramp is sampled more finely at a higher rate: 29.13, 29.07, 29.03.
                assert other.players()[key]["boost_avg"] == pytest.approx(
                    expected.pop("boost_avg"), rel=0.01)
                expected["boost_avg"] = other.players()[key]["boost_avg"]
            assert other.players()[key] == approx(expected)
        assert other.duration_s == pytest.approx(first.duration_s)
        assert other.teams() == first.teams()


def test_a_never_visible_player_has_none_for_the_car_and_numbers_for_demolitions() -> None:
    ghost = run(events(synthetic.scripted_match(30))).players()[GHOST.primary_id]
    assert all(ghost[key] is None for key in CAR_KEYS)
    assert (ghost["demos_inflicted"], ghost["demos_taken"]) == (0, 1)


def test_every_key_of_the_contract_is_there_and_nothing_is_rounded_to_zero() -> None:
    players = run(events(synthetic.scripted_match(30))).players()
    for line in players.values():
        assert tuple(line) == PLAYER_KEYS
    assert players[GHOST.primary_id]["tracked_s"] is None  # unseen is not zero


# -- edges ---------------------------------------------------------------------------------------


def test_a_recording_that_begins_in_the_middle_of_play_counts_once_the_clock_runs() -> None:
    messages = synthetic.scripted_match(60)
    start = next(i for i, m in enumerate(messages) if m["Event"] == "RoundStarted")
    updates = [i for i, m in enumerate(messages) if i > start and is_update(m)]
    # 0.5 s into span A: no MatchCreated, no countdown, no RoundStarted.
    stats = run(events(messages[updates[30]:]))
    # The 300 second was seen only in part: its 30 ticks weigh 1/60 s each.
    assert stats.duration_s == pytest.approx(11.0)
    blue = stats.players()[BLUE.primary_id]
    assert blue["tracked_s"] == pytest.approx(8.0)
    assert blue["distance"] == pytest.approx(8300 - 500)
    orange = stats.players()[ORANGE.primary_id]
    assert orange["boost_used"] == pytest.approx(31.0)  # from 31 (0.5 s into the ramp) to 0


def test_a_recording_that_begins_in_the_countdown_does_not_count_the_countdown() -> None:
    messages = synthetic.scripted_match(30)
    countdown = next(i for i, m in enumerate(messages) if m["Event"] == "CountdownBegin")
    whole = run(events(messages))
    cut = run(events(messages[countdown + 10:]))  # frozen ticks first, then RoundStarted
    assert cut.players() == whole.players()
    assert cut.duration_s == whole.duration_s


def test_a_jump_of_the_clock_counts_the_seconds_seen_and_not_the_ones_missed() -> None:
    messages = synthetic.scripted_match(60)
    # D1 runs through the 296, 295 and 294 seconds: lose 295 and 294 entirely.
    gone = [m for m in messages if _clock_of(m) in (295, 294) and _live_part(m)]
    stats = run(events(m for m in messages if not any(m is g for g in gone)))
    # The 296 second (its end unseen) and 293 (its start unseen) weigh 1/60 a tick:
    # still one second each, since the rate measured on whole seconds is exactly 60.
    assert stats.duration_s == pytest.approx(11.5 - 2)
    assert stats.players()[BLUE.primary_id]["time_demolished_s"] == pytest.approx(1.0)


def _clock_of(message: dict[str, Any]) -> int | None:
    data = json.loads(message["Data"])
    if message["Event"] == "ClockUpdatedSeconds":
        return int(data["TimeSeconds"])
    if is_update(message) and not data["Game"]["bReplay"]:
        return int(data["Game"]["TimeSeconds"])
    return None


def _live_part(message: dict[str, Any]) -> bool:
    return message["Event"] in ("UpdateState", "ClockUpdatedSeconds")


def test_a_clock_that_stands_still_in_play_counts_its_ticks_at_the_measured_rate() -> None:
    stream = Stream(60, [BLUE, ORANGE])
    synthetic.kickoff(stream, first=True)
    cars: dict[synthetic.Player, synthetic.Plan] = {BLUE: Car(50, 1000), ORANGE: Car(50, 0)}
    stream.play(2.0, cars, ball=0)
    stream.still(3.0, cars, ball=0)  # live, yet the clock shows 298 for 3 s
    stream.play(2.0, cars, ball=0)  # 298 one more second, then 297
    stats = run(events(stream.messages))
    # 298 had 240 ticks: not a whole second (more than 1.5 x 60), so each weighs 1/60.
    assert stats.duration_s == pytest.approx(2 + 3 + 2)
    stream.event("MatchEnded", {"WinnerTeamNum": 0})
    stats = run(events(stream.messages))
    assert stats.duration_s == pytest.approx(7.0)
    assert stats.players()[BLUE.primary_id]["distance"] == pytest.approx(7000.0)


def test_the_second_under_way_counts_provisionally_and_close_settles_it() -> None:
    messages = synthetic.scripted_match(60)
    end = next(i for i, m in enumerate(messages) if m["Event"] == "MatchEnded")
    live = run(events(messages[:end]))
    assert live.duration_s == pytest.approx(11.5)  # the 289 second so far, at 1/60 a tick
    live.close()
    assert live.duration_s == pytest.approx(11.5)
    live.feed(formats.parse(messages[end - 1]))  # nothing counts after the end
    assert live.duration_s == pytest.approx(11.5)


def test_a_goal_in_the_middle_of_a_second_joins_its_two_halves_into_one_second() -> None:
    stats = run(events(synthetic.scripted_match(60)))
    state = stats.to_state()
    # 300..290 whole (the 292 second: 30 ticks before the goal and 30 after the kickoff).
    assert (state["whole_seconds"], state["whole_ticks"]) == (11, 660)
    assert state["partial"]["ticks"] == 30  # the 289 second, cut by the end of the match


# -- the same figures however the match arrives ------------------------------------------------


def test_a_state_round_trip_at_every_event_changes_nothing() -> None:
    stream = events(synthetic.scripted_match(30))
    straight, restored = MatchStats(), MatchStats()
    for i, event in enumerate(stream):
        straight.feed(event)
        state = json.loads(json.dumps(restored.to_state()))
        restored = MatchStats.from_state(state)
        restored.feed(event)
        assert restored.to_state() == straight.to_state(), f"after event {i}"
    assert restored.players() == straight.players()
    assert restored.teams() == straight.teams()
    assert restored.duration_s == straight.duration_s


def test_a_round_trip_gives_equal_readings_in_the_middle_of_a_second() -> None:
    stream = events(synthetic.scripted_match(60))
    stats = run(stream[:200])
    copy = MatchStats.from_state(json.loads(json.dumps(stats.to_state())))
    assert copy.players() == stats.players()
    assert copy.teams() == stats.teams()
    assert copy.duration_s == stats.duration_s


def test_from_state_refuses_a_state_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="version"):
        MatchStats.from_state({"version": 99})


def within(got: dict[str, Stats], want: dict[str, Stats], rel: float) -> list[str]:
    """Keys further apart than ``rel`` (None must stay None)."""
    off = []
    for player, line in want.items():
        for key, value in line.items():
            other = got[player][key]
            if value is None or other is None:
                if value is not other:
                    off.append(f"{player} {key}: {other} != {value}")
            elif abs(other - value) > rel * abs(value) + 1e-9:
                off.append(f"{player} {key}: {other} vs {value}")
    return off


@pytest.fixture(scope="module")
def long_stream() -> list[formats.Event]:
    return events(synthetic.long_match(60))


def test_one_update_in_a_hundred_dropped_stays_within_one_percent(
    long_stream: Sequence[formats.Event],
) -> None:
    whole = run(long_stream)
    rng = random.Random(17)
    dropped = [e for e in long_stream
               if not (isinstance(e, formats.Snapshot) and rng.random() < 0.01)]
    assert len(long_stream) - len(dropped) > 100
    thinned = run(dropped)
    assert within(thinned.players(), whole.players(), 0.01) == []
    assert thinned.duration_s == pytest.approx(whole.duration_s, rel=0.01)
    for team, line in whole.teams().items():
        assert thinned.teams()[team]["possession_s"] == pytest.approx(
            line["possession_s"], rel=0.01)


def test_updates_out_of_order_and_skipped_as_stale_stay_within_one_percent(
    long_stream: Sequence[formats.Event],
) -> None:
    """The store skips a snapshot older than one already applied: a few go missing."""
    whole = run(long_stream)
    rng = random.Random(7)
    order = list(range(len(long_stream)))
    updates = [i for i in order if isinstance(long_stream[i], formats.Snapshot)]
    for i in rng.sample(range(len(updates) - 3), len(updates) // 100):
        a, b = updates[i], updates[i + 3]  # one snapshot overtaken by the third after it
        order[a], order[b] = order[b], order[a]
    high, kept = -1, []
    for i in order:
        if isinstance(long_stream[i], formats.Snapshot):
            if i < high:
                continue  # stale: the store skips it
            high = i
        kept.append(long_stream[i])
    assert len(long_stream) - len(kept) > 100
    late = run(kept)
    assert within(late.players(), whole.players(), 0.01) == []
    assert late.duration_s == pytest.approx(whole.duration_s, rel=0.01)


def test_a_snapshot_from_a_second_already_over_is_skipped_by_the_engine_too() -> None:
    stream = events(synthetic.scripted_match(30))
    first = next(i for i, e in enumerate(stream) if isinstance(e, formats.Phase)
                 and e.kind == "round_started") + 1
    late = stream[first]  # a tick of the 300 second
    moved = [*stream[:first + 45], late, *stream[first + 45:]]  # arrives in 299
    stats = run(moved)
    assert stats.stale == 1
    assert stats.players() == run(stream).players()


def test_the_long_match_adds_up(long_stream: Sequence[formats.Event]) -> None:
    stats = run(long_stream)
    # 30 times the 8 s middle, and 5 goals with 0.5 s before and after each.
    assert stats.duration_s == pytest.approx(30 * 8 + 5 * 1.0)
    ghost = stats.players()[GHOST.primary_id]
    assert ghost["demos_taken"] == 10
    assert ghost["tracked_s"] is None
    orange = stats.players()[ORANGE.primary_id]
    assert orange["demos_inflicted"] == 40
    assert orange["time_supersonic_s"] == pytest.approx(30 * 4.0)


# -- careers and sessions ------------------------------------------------------------------------


def test_aggregate_sums_weights_the_averages_and_recomputes_the_rates() -> None:
    players = run(events(synthetic.scripted_match(30))).players()
    blue, ghost = players[BLUE.primary_id], players[GHOST.primary_id]
    short: Stats = dict(blue) | {"tracked_s": 1.5, "boost_avg": 100.0, "speed_avg": 0.0,
                                 "boost_collected": 0.0, "boost_used": 0.0, "distance": 0.0}
    total = aggregate([blue, short, ghost])
    assert total["tracked_s"] == pytest.approx(10.0)
    assert total["boost_avg"] == pytest.approx((BLUE_BOOST_TIME + 150) / 10)
    assert total["speed_avg"] == pytest.approx(8300 / 10)
    assert total["bpm"] == pytest.approx(67 * 60 / 10)
    assert total["bcpm"] == pytest.approx(13 * 60 / 10)
    assert total["time_demolished_s"] == pytest.approx(6.0)
    assert total["powerslide_count"] == 2
    assert total["demos_taken"] == 3  # the unseen match's demolition counts too
    assert tuple(total) == PLAYER_KEYS


def test_aggregate_of_matches_where_the_player_was_never_seen_is_none() -> None:
    ghost = run(events(synthetic.scripted_match(30))).players()[GHOST.primary_id]
    total = aggregate([ghost, ghost])
    assert all(total[key] is None for key in CAR_KEYS)
    assert (total["demos_inflicted"], total["demos_taken"]) == (0, 2)
    assert aggregate([]) == {}


def test_aggregate_sums_possession_and_duration() -> None:
    assert aggregate([{"possession_s": 5.0}, {"possession_s": 1.5}]) == {"possession_s": 6.5}
    assert aggregate([{"duration_s": 11.5}, {"duration_s": 300.0}]) == {"duration_s": 311.5}


# -- the real recording ----------------------------------------------------------------------------


def test_the_real_recording_gives_plausible_figures_and_none_for_the_unseen() -> None:
    lines = CAPTURE_JSONL.read_text().splitlines()
    stats = run(events(json.loads(line) for line in lines))
    # 7.1 s of play with the clock running from 81 to 74, no RoundStarted in it.
    assert 6.8 < stats.duration_s < 7.4
    nickm = stats.players()[NICKM]
    assert nickm["tracked_s"] == pytest.approx(stats.duration_s)
    assert 0 <= nickm["speed_avg"] < 2300  # type: ignore[operator]
    assert nickm["boost_avg"] == pytest.approx(33.0)  # parked on the kickoff's 33
    assert nickm["time_ground_s"] == pytest.approx(stats.duration_s)
    assert (nickm["boost_collected"], nickm["boost_used"]) == (0.0, 0.0)
    zone = stats.players()[ZONE_KILLA]
    assert all(zone[key] is None for key in CAR_KEYS)
    assert (zone["demos_inflicted"], zone["demos_taken"]) == (0, 0)
    # Orange (Zone Killa) touched the ball last all along.
    assert stats.teams()[1]["possession_s"] == pytest.approx(stats.duration_s)
    assert stats.teams()[0]["possession_s"] == 0.0


# -- what formats.py reads for them ------------------------------------------------------------


def test_a_car_is_visible_by_any_of_its_keys_and_what_is_left_out_is_zero_or_false() -> None:
    event = formats.parse({"Event": "UpdateState", "Data": json.dumps({
        "MatchGuid": "G", "Players": [
            {"Name": "seen", "PrimaryId": "Steam|1|0", "TeamNum": 0, "Boost": 0.0},
            {"Name": "parked", "PrimaryId": "Steam|2|0", "TeamNum": 0, "bHasCar": True},
            {"Name": "gone", "PrimaryId": "Steam|3|0", "TeamNum": 1, "bDemolished": True},
            {"Name": "unseen", "PrimaryId": "Steam|4|0", "TeamNum": 1, "Score": 10},
        ],
        "Game": {"TimeSeconds": 100, "Ball": {"TeamNum": 1}, "bReplay": False},
    })})
    assert isinstance(event, formats.Snapshot)
    seen, parked, gone, unseen = (line.car for line in event.players)
    assert seen == formats.Car()
    assert parked == formats.Car(has_car=True)
    assert gone == formats.Car(demolished=True)
    assert unseen is None
    assert event.ball_team == 1


def test_the_events_that_time_play_are_typed_and_still_generic_for_the_scoreboard() -> None:
    def parse(name: str, data: dict[str, Any]) -> formats.Event:
        return formats.parse({"Event": name, "Data": json.dumps({"MatchGuid": "G", **data})})

    kinds = {name: parse(name, {}) for name in ("RoundStarted", "CountdownBegin",
                                                "MatchPaused", "MatchUnpaused",
                                                "GoalReplayStart", "PodiumStart")}
    assert {name: e.kind for name, e in kinds.items() if isinstance(e, formats.Phase)} == {
        "RoundStarted": "round_started", "CountdownBegin": "countdown",
        "MatchPaused": "paused", "MatchUnpaused": "unpaused", "GoalReplayStart": "replay",
        "PodiumStart": "podium"}
    clock = parse("ClockUpdatedSeconds", {"TimeSeconds": 12, "bOvertime": True})
    assert isinstance(clock, formats.Clock)
    assert (clock.time_seconds, clock.overtime) == (12, True)
    demo = parse("StatfeedEvent", {"EventName": "Demolish", "Type": "Demolition",
                                   "MainTarget": {"Name": "A", "Shortcut": 1, "TeamNum": 0},
                                   "SecondaryTarget": {"Name": "B", "Shortcut": 2, "TeamNum": 1}})
    assert isinstance(demo, formats.Demolition)
    assert (demo.attacker, demo.attacker_team, demo.victim, demo.victim_team) == ("A", 0, "B", 1)
    shot = parse("StatfeedEvent", {"EventName": "Shot", "MainTarget": {"Name": "A"}})
    nameless = parse("StatfeedEvent", {"EventName": "Demolish", "MainTarget": {"Name": "A"}})
    for event in (*kinds.values(), clock, demo, shot, nameless):
        assert isinstance(event, formats.Generic)  # nothing for the scoreboard to store
    assert type(shot) is formats.Generic
    assert type(nameless) is formats.Generic
