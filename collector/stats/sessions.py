"""A player's sessions: their matches with gaps under ``session_gap_minutes``, built on read.

A player's matches are taken in start order (``started_at``, then id). A match opens a
new session when it starts ``gap_s`` seconds or more after the previous one ended (its
``started_at`` when it has no end); less than that, it continues the session. So with
the default 30 minutes, a gap of 29:59 keeps the session and 30:00 starts a new one.

Nothing is stored: the split is one SQL query (window functions) over match_players and
matches, so it always agrees with the matches and a changed setting applies at once. A
session's id is ``"<player id>.<id of its first match>"``: stable while the matches
stay, opaque to clients. Pages are newest first by the first match's start; the cursor
is the last session's id. Every function runs in the store's executor thread on its
connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from collector.stats.arenas import arena_name
from collector.stats.backend import Connection
from collector.stats.derived import PLAYER_KEYS, Stats, aggregate, rounded
from collector.stats.schema import LINE_FIELDS

_MAX_ID: Final = 2**63 - 1

#: Every line of a player with its session: `head` is 1 for a line that opens a session,
#: `nth` numbers the player's sessions from 1. {where} narrows the lines (a player).
_NUMBERED: Final = """
WITH lines AS (
    SELECT mp.player_id AS player, m.id AS match_id, m.started_at AS started,
           lag(coalesce(m.ended_at, m.started_at)) OVER (
               PARTITION BY mp.player_id ORDER BY m.started_at, m.id) AS previous_end
    FROM match_players mp JOIN matches m ON m.id = mp.match_id {where}
), flagged AS (
    SELECT player, match_id, started,
           CASE WHEN previous_end IS NULL OR started - previous_end >= :gap
                THEN 1 ELSE 0 END AS head
    FROM lines
), numbered AS (
    SELECT player, match_id, started, head,
           sum(head) OVER (PARTITION BY player ORDER BY started, match_id
                           ROWS UNBOUNDED PRECEDING) AS nth
    FROM flagged
), page AS (
    SELECT player, nth, match_id AS first_id, started AS first_started FROM numbered
    WHERE head = 1 AND {page}
    ORDER BY first_started DESC, first_id DESC, player DESC LIMIT :limit
)
SELECT page.player, page.first_id, p.name,
       m.id, m.guid, m.arena, m.playlist, m.started_at, m.ended_at, m.winner, mp.team,
       mp.score, mp.goals, mp.shots, mp.assists, mp.saves, mp.touches, mp.demos, mp.stats
FROM page
-- CROSS JOIN keeps this order: page (a few rows) first. Left to itself SQLite scanned
-- the whole of numbered once per line of the player (2 million rows for one with 460
-- matches: 219 ms against 2.5 ms; docs/performance-log.md).
CROSS JOIN numbered n ON n.player = page.player AND n.nth = page.nth
JOIN matches m ON m.id = n.match_id
JOIN match_players mp ON mp.match_id = m.id AND mp.player_id = page.player
JOIN players p ON p.id = page.player
ORDER BY page.first_started DESC, page.first_id DESC, page.player DESC,
         m.started_at, m.id
"""
_FIRST_LINE_COLUMN: Final = 3


def parse_session_id(text: str) -> tuple[int, int] | None:
    """``"<player id>.<first match id>"`` as two ints, or None when malformed."""
    left, sep, right = text.partition(".")
    if (not sep or len(text) > 40 or not (left.isascii() and left.isdigit())
            or not (right.isascii() and right.isdigit())):
        return None
    player, first = int(left), int(right)
    if max(player, first) > _MAX_ID:
        return None
    return player, first


def session_id(player: int, first_match: int) -> str:
    return f"{player}.{first_match}"


def sessions_page(conn: Connection, *, gap_s: float, limit: int,
                  before: tuple[int, int] | None = None, player: int | None = None
                  ) -> dict[str, Any] | None:
    """``{"sessions": [...], "next": cursor or None}``, newest first; with `player`,
    only theirs. `before` is a session id from a previous page; None is returned when it
    names no match (a cursor that no page gave)."""
    params: dict[str, Any] = {"gap": gap_s, "limit": limit + 1, "player": player}
    page = "1 = 1"
    if before is not None:
        row = conn.execute("SELECT started_at FROM matches WHERE id = ?",
                           (before[1],)).fetchone()
        if row is None:
            return None
        page = "(started, match_id, player) < (:b_started, :b_first, :b_player)"
        params.update(b_started=row[0], b_first=before[1], b_player=before[0])
    where = "" if player is None else "WHERE mp.player_id = :player"
    sessions = _sessions(conn, _NUMBERED.format(where=where, page=page), params)
    more = len(sessions) > limit
    sessions = sessions[:limit]
    for session in sessions:
        session["matches"] = len(session["matches"])
    return {"sessions": sessions, "next": sessions[-1]["id"] if more else None}


def session(conn: Connection, key: tuple[int, int], *, gap_s: float
            ) -> dict[str, Any] | None:
    """One session (``(player id, first match id)``) with its matches, or None when that
    match does not open a session of that player."""
    player, first = key
    sql = _NUMBERED.format(where="WHERE mp.player_id = :player", page="match_id = :first")
    found = _sessions(conn, sql, {"gap": gap_s, "limit": 1, "player": player,
                                  "first": first})
    return found[0] if found else None


def _sessions(conn: Connection, sql: str, params: dict[str, Any]
              ) -> list[dict[str, Any]]:
    """The sessions the query finds, in its order, each with its list of matches."""
    out: list[dict[str, Any]] = []
    lines: list[Sequence[Any]] = []
    key: tuple[int, int] | None = None
    name = ""
    for row in conn.execute(sql, params):
        if (row[0], row[1]) != key:
            if key is not None:
                out.append(_session_json(key, name, lines))
            key, name, lines = (row[0], row[1]), row[2], []
        lines.append(row[_FIRST_LINE_COLUMN:])
    if key is not None:
        out.append(_session_json(key, name, lines))
    return out


def _match_json(line: Sequence[Any]) -> dict[str, Any]:
    winner, team = line[6], line[7]
    return {
        "id": line[0], "guid": line[1], "arena": line[2], "arena_name": arena_name(line[2]),
        "playlist": line[3],
        "started_at": line[4], "ended_at": line[5], "winner": winner, "team": team,
        "won": None if winner is None or team is None else winner == team,
        **dict(zip(LINE_FIELDS, line[8:15], strict=True)),
        "stats": None if line[15] is None else orjson.loads(line[15]),
    }


def _session_json(key: tuple[int, int], name: str, lines: list[Sequence[Any]]
                  ) -> dict[str, Any]:
    matches = [_match_json(line) for line in lines]
    results = [m["won"] for m in matches if m["won"] is not None]
    count = len(matches)
    totals = {f: sum(m[f] or 0 for m in matches) for f in LINE_FIELDS}
    return {
        "id": session_id(*key),
        "player": {"id": key[0], "name": name},
        "started_at": matches[0]["started_at"],
        "ended_at": matches[-1]["ended_at"],
        "matches": matches,
        "wins": results.count(True),
        "losses": results.count(False),
        "streak": streak(results),
        "totals": totals,
        "averages": {f: totals[f] / count for f in LINE_FIELDS},
        "stats": session_stats([m["stats"] for m in matches]),
    }


def streak(results: Sequence[bool]) -> dict[str, Any] | None:
    """The run the decided results end with: ``{"kind": "W"|"L", "length": n}``, or None
    when no match of the session has a winner yet (undecided matches are left out)."""
    if not results:
        return None
    last = results[-1]
    length = 0
    for result in reversed(results):
        if result != last:
            break
        length += 1
    return {"kind": "W" if last else "L", "length": length}


def session_stats(per_match: Sequence[Stats | None]) -> Stats:
    """The derived statistics of the matches that have them, aggregated
    (:func:`collector.stats.derived.aggregate`); every key null when none has them."""
    stats = aggregate([s for s in per_match if s is not None])
    return rounded(stats) if stats else dict.fromkeys(PLAYER_KEYS)
