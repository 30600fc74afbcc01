"""Stats API messages built for the stats tests: a match GUID and UpdateState snapshots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from collector.stats.store import StatsStore

GUID = "1F7ED23011F1435166EBAB919DB5566D"


def update(guid: str, players: list[tuple[str, str | None, int, int, int]],
           score: tuple[int, int] = (0, 0), **game: Any) -> dict[str, Any]:
    """An UpdateState with (name, primary id, team, score, goals) players."""
    return api("UpdateState", {
        "MatchGuid": guid,
        "Players": [{"Name": n, "PrimaryId": pid or "Unknown|0|0", "TeamNum": t, "Score": s,
                     "Goals": g, "Shots": g, "Assists": 0, "Saves": 0, "Touches": s // 10,
                     "Demos": 0} for n, pid, t, s, g in players],
        "Game": {"Teams": [{"Name": "Blue", "TeamNum": 0, "Score": score[0]},
                           {"Name": "Orange", "TeamNum": 1, "Score": score[1]}],
                 "Arena": "Stadium_P", **game},
    })


def api(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """A Stats API message with Data double encoded, as on the wire."""
    return {"Event": event, "Data": json.dumps(data)}


async def rows(store: StatsStore, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of `sql` on an open store's own connection, in its thread: stats.db's or
    PostgreSQL's, whichever the store runs on (the SQL both speak)."""
    db = store._require()

    def query() -> list[tuple[Any, ...]]:
        return [tuple(row) for row in db.conn.execute(sql, params).fetchall()]

    return await store._run(query)
