"""Reading stats.db: the pages and documents of the query API and the CLI tables.
Every function runs in the store's executor thread on its connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from collector.stats.schema import LINE_FIELDS

_RECENT_MATCHES: Final = 10


def parse_players_cursor(text: str) -> tuple[int, int] | None:
    """The players page cursor ``"<last_seq>.<id>"``, or None when malformed."""
    left, sep, right = text.partition(".")
    if not sep or not left.isdigit() or not right.isdigit() or len(text) > 40:
        return None
    return int(left), int(right)


def matches_page(conn: sqlite3.Connection, limit: int, before: int | None) -> dict[str, Any]:
    rows = conn.execute(
        f"SELECT {_MATCH_COLUMNS} FROM matches WHERE id < ? ORDER BY id DESC LIMIT ?",  # noqa: S608
        (before if before is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    teams = _teams(conn, [r[0] for r in rows])
    matches = [_match_json(r, teams.get(r[0], [])) for r in rows]
    return {"matches": matches, "next": str(rows[-1][0]) if more else None}


def _teams(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    out: dict[int, list[dict[str, Any]]] = {}
    for match_id, num, name, score in conn.execute(
        f"SELECT match_id, num, name, score FROM match_teams WHERE match_id IN ({marks}) "  # noqa: S608 - only placeholders
        "ORDER BY match_id, num",
        list(ids),
    ):
        out.setdefault(match_id, []).append({"num": num, "name": name, "score": score})
    return out


def match(conn: sqlite3.Connection, key: int | str) -> dict[str, Any] | None:
    where = "id = ?" if isinstance(key, int) else "guid = ?"
    row = conn.execute(
        f"SELECT {_MATCH_COLUMNS} FROM matches WHERE {where}", (key,)  # noqa: S608
    ).fetchone()
    if row is None:
        return None
    match_id = row[0]
    out = _match_json(row, _teams(conn, [match_id]).get(match_id, []))
    out["players"] = [
        {"player_id": r[0], "name": r[1], "primary_id": r[2], "team": r[3],
         **dict(zip(LINE_FIELDS, r[4:], strict=True))}
        for r in conn.execute(
            "SELECT mp.player_id, mp.name, p.primary_id, mp.team, mp.score, mp.goals, "
            "mp.shots, mp.assists, mp.saves, mp.touches, mp.demos "
            "FROM match_players mp JOIN players p ON p.id = mp.player_id "
            "WHERE mp.match_id = ? ORDER BY mp.team IS NULL, mp.team, mp.score DESC, "
            "mp.player_id",
            (match_id,),
        )
    ]
    out["goals"] = [
        {"seq": r[0], "scorer": r[1], "scorer_id": r[2], "scorer_team": r[3],
         "assister": r[4], "speed": r[5], "game_time": r[6], "received_at": r[7],
         "last_touch": r[8],
         "impact": None if r[9] is None else {"x": r[9], "y": r[10], "z": r[11]}}
        for r in conn.execute(
            "SELECT seq, scorer, scorer_id, scorer_team, assister, speed, game_time, "
            "received_at, last_touch, impact_x, impact_y, impact_z "
            "FROM goals WHERE match_id = ? ORDER BY seq",
            (match_id,),
        )
    ]
    return out


def players_page(conn: sqlite3.Connection, limit: int, before: tuple[int, int] | None
                 ) -> dict[str, Any]:
    last, pid = before if before is not None else (2**63 - 1, 2**63 - 1)
    rows = conn.execute(
        f"SELECT {_PLAYER_COLUMNS} FROM players p "  # noqa: S608 - constants only
        "WHERE (p.last_seq, p.id) < (?, ?) ORDER BY p.last_seq DESC, p.id DESC LIMIT ?",
        (last, pid, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    players = [_player_json(r) for r in rows]
    cursor = f"{rows[-1][_PLAYER_LAST_SEQ]}.{rows[-1][0]}" if more else None
    return {"players": players, "next": cursor}


def player(conn: sqlite3.Connection, player_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_PLAYER_COLUMNS} FROM players p WHERE p.id = ?",  # noqa: S608
        (player_id,),
    ).fetchone()
    if row is None:
        return None
    out = _player_json(row)
    out["recent_matches"] = [
        {"id": r[0], "guid": r[1], "arena": r[2], "playlist": r[3], "started_at": r[4],
         "ended_at": r[5], "winner": r[6], "team": r[7],
         "won": None if r[6] is None or r[7] is None else r[6] == r[7],
         **dict(zip(LINE_FIELDS, r[8:], strict=True))}
        for r in conn.execute(
            "SELECT m.id, m.guid, m.arena, m.playlist, m.started_at, m.ended_at, "
            "m.winner, mp.team, mp.score, mp.goals, mp.shots, mp.assists, mp.saves, "
            "mp.touches, mp.demos FROM match_players mp "
            "JOIN matches m ON m.id = mp.match_id WHERE mp.player_id = ? "
            "ORDER BY m.id DESC LIMIT ?",
            (player_id, _RECENT_MATCHES),
        )
    ]
    return out


_MATCH_COLUMNS: Final = (
    "id, guid, arena, playlist, started_at, ended_at, overtime, winner, offline, "
    "end_reason, time_seconds"
)
_PLAYER_COLUMNS: Final = (
    "p.id, p.name, p.primary_id, p.matches, p.score, p.goals, p.shots, p.assists, p.saves, "
    "p.touches, p.demos, p.last_seq, "
    "(SELECT count(*) FROM match_players mp JOIN matches m ON m.id = mp.match_id "
    " WHERE mp.player_id = p.id AND m.winner IS NOT NULL AND m.winner = mp.team)"
)
_PLAYER_LAST_SEQ: Final = 11


def _match_json(row: Sequence[Any], teams: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row[0], "guid": row[1], "arena": row[2], "playlist": row[3],
        "started_at": row[4], "ended_at": row[5], "overtime": bool(row[6]),
        "winner": row[7], "offline": bool(row[8]), "end_reason": row[9],
        "time_seconds": row[10], "teams": teams,
    }


def _player_json(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0], "name": row[1], "primary_id": row[2], "matches": row[3],
        "wins": row[12], "score": row[4], "goals": row[5], "shots": row[6],
        "assists": row[7], "saves": row[8], "touches": row[9], "demos": row[10],
    }
