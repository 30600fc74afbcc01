"""scripts/simulate_match.py, the match for trying the dashboard without the game: the
same seed gives the same bytes, and what it writes, applied by the real stats store,
is a consistent match (every goal it scores is stored once, the scoreboard adds up,
the winner has more goals, every car is seen)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.jobs import Job
from collector.stats.store import StatsStore
from scripts.simulate_match import simulate

pytestmark = pytest.mark.both_backends

T0 = 1_790_000_000.0


def test_the_same_seed_gives_the_same_match() -> None:
    assert simulate(seed=5, size=1, minutes=0.5, rate=10) == \
        simulate(seed=5, size=1, minutes=0.5, rate=10)
    assert simulate(seed=5, size=1, minutes=0.5, rate=10) != \
        simulate(seed=6, size=1, minutes=0.5, rate=10)


async def test_a_simulated_match_is_consistent_once_stored(tmp_path: Path) -> None:
    lines = simulate(seed=3, size=2, minutes=1.5, rate=15)
    messages = [json.loads(line) for line in lines]
    scored = [json.loads(m["Data"]) for m in messages if m["Event"] == "GoalScored"]
    real_goals = [g for g in scored if g["Scorer"]["Name"]]  # not the bogus echoes
    store = StatsStore(tmp_path / "data")
    await store.open()
    try:
        jobs = [Job(seq=i + 1, payload=m, received_at=T0 + i / 15)
                for i, m in enumerate(messages)]
        for start in range(0, len(jobs), 500):
            await store.apply_run(jobs[start:start + 500])
        page = await store.matches_page(limit=5)
        assert len(page["matches"]) == 1
        match = await store.match(page["matches"][0]["id"])
    finally:
        await store.close()
    assert match is not None
    assert len(real_goals) >= 1
    assert len(match["goals"]) == len(real_goals)
    scores = {t["num"]: t["score"] for t in match["teams"]}
    assert sum(scores.values()) == len(real_goals)
    assert {t: sum(p["goals"] for p in match["players"] if p["team"] == t) for t in (0, 1)} \
        == scores
    assert match["winner"] == max(scores, key=lambda t: scores[t])
    assert scores[0] != scores[1]  # a tie goes to overtime until someone scores
    assert len(match["players"]) == 4
    assert all(p["stats"]["tracked_s"] > 60 for p in match["players"])
    assert all(g["clock"] is not None for g in match["goals"])
