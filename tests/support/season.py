"""A few matches at known times, applied through the real stats store, for the sessions
and CSV tests.

Each match is an UpdateState at its start and a MatchEnded at its end (none: still
live); a Job's ``received_at`` is when the store says the match started or ended, so
the gaps between matches are exact.

SEASON, with the default 30 minute gap (players by id: Ann 1, Bob 2, Cid 3):

==========  =====================  ===========================  ==========================
match       start                  lines (team)                 result
==========  =====================  ===========================  ==========================
1 (g1)      T0, ends T0+300        Ann 0, Bob 1                 team 0 wins
2 (g2)      29:59 after 1's end    Ann 0, Cid 1                 team 1 wins
3 (g3)      30:00 after 2's end    Ann 0, Bob 1                 team 0 wins
4 (g4)      1 min after 3's end    Ann 0, Bob 1                 team 0 wins
5 (g5)      10 s after 4's end     Ann 0, Bob 1                 live, no winner
==========  =====================  ===========================  ==========================

So Ann has sessions 1.1 (matches 1, 2: W L) and 1.3 (3, 4, 5: W W, streak W2, live);
Bob 2.1 (1: L) and 2.3 (3, 4, 5: L L); Cid 3.2 (2: W).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.jobs import Job
from collector.stats.derived import PLAYER_KEYS
from collector.stats.schema import STATS_FILE
from collector.stats.store import StatsStore
from tests.support.stats import api, update

T0 = 1_790_000_000.0
MATCH_S = 300.0
ANN = ("Ann", "Steam|1|0")
BOB = ("Bob", "Steam|2|0")
CID = ("Cid", "Steam|3|0")


@dataclass(frozen=True)
class Game:
    """One match: when, who (name, primary id, team, score, goals) and who won."""

    guid: str
    start: float
    end: float | None
    lines: tuple[tuple[str, str, int, int, int], ...]
    winner: int | None = None


def season() -> list[Game]:
    """The matches of the module docstring's table."""
    m1 = Game("g1", T0, T0 + MATCH_S, ((*ANN, 0, 300, 2), (*BOB, 1, 150, 0)), 0)
    start2 = T0 + MATCH_S + 1799
    m2 = Game("g2", start2, start2 + MATCH_S, ((*ANN, 0, 100, 0), (*CID, 1, 400, 3)), 1)
    start3 = start2 + MATCH_S + 1800
    m3 = Game("g3", start3, start3 + MATCH_S, ((*ANN, 0, 500, 1), (*BOB, 1, 200, 1)), 0)
    start4 = start3 + MATCH_S + 60
    m4 = Game("g4", start4, start4 + MATCH_S, ((*ANN, 0, 250, 1), (*BOB, 1, 50, 0)), 0)
    start5 = start4 + MATCH_S + 10
    m5 = Game("g5", start5, None, ((*ANN, 0, 20, 0), (*BOB, 1, 10, 0)))
    return [m1, m2, m3, m4, m5]


def game_jobs(games: list[Game]) -> list[Job]:
    """The games' messages as jobs, seq counting up, received at the games' times."""
    out: list[Job] = []
    for game in games:
        payloads: list[tuple[float, Any]] = [(game.start, update(game.guid, list(game.lines)))]
        if game.end is not None:
            payloads.append((game.end, api("MatchEnded", {"MatchGuid": game.guid,
                                                          "WinnerTeamNum": game.winner})))
        for at, payload in payloads:
            out.append(Job(seq=len(out) + 1, payload=payload, received_at=at, source=None,
                           sequence=None))
    return out


async def build(data_dir: Path, games: list[Game] | None = None) -> Path:
    """A stats.db in `data_dir` holding `games` (default: the season); returns its path."""
    store = StatsStore(data_dir)
    await store.open()
    try:
        for job in game_jobs(season() if games is None else games):
            await store.apply(job)
    finally:
        await store.close()
    return data_dir / STATS_FILE


def sample_stats(seed: float) -> dict[str, Any]:
    """A player's derived statistics in one match: every key, numbers from `seed`."""
    stats: dict[str, Any] = {key: round(seed * (i + 1) / 7, 3) for i, key in
                             enumerate(PLAYER_KEYS)}
    stats.update(powerslide_count=int(seed), demos_inflicted=1, demos_taken=0,
                 tracked_s=60.0 * seed)
    return stats


def set_stats(db: Path, guid: str, primary_id: str, stats: dict[str, Any] | None) -> None:
    """Write a player's stats JSON of a match straight into stats.db (store closed)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            changed = conn.execute(
                "UPDATE match_players SET stats = ? WHERE match_id = "
                "(SELECT id FROM matches WHERE guid = ?) AND player_id = "
                "(SELECT id FROM players WHERE primary_id = ?)",
                (None if stats is None else json.dumps(stats), guid, primary_id),
            ).rowcount
        assert changed == 1, (guid, primary_id)
    finally:
        conn.close()
