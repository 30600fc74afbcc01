"""Reading stats.db: the pages and documents of the query API and the CLI tables.
Every function runs in the store's executor thread on its connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from collector.stats.arenas import arena_name
from collector.stats.backend import Connection
from collector.stats.derived import PLAYER_KEYS, Stats, aggregate, rounded
from collector.stats.schema import LINE_FIELDS

_RECENT_MATCHES: Final = 10
#: A cursor above every id (the first page).
_NO_CURSOR: Final = 2**63 - 1
#: The derived statistics the players list carries (the player document has them all).
HEADLINE_KEYS: Final = ("tracked_s", "boost_avg", "bpm", "speed_avg", "time_supersonic_s",
                        "demos_inflicted")


def derived(text: str | None) -> Stats:
    """A stored ``match_players.stats`` as the API shows it: every key, None where the
    match had nothing for the player (or no ticks at all)."""
    stored: dict[str, Any] = {}
    if text:
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            stored = loaded
    return {key: stored.get(key) for key in PLAYER_KEYS}


def _aggregated(texts: Sequence[str | None]) -> Stats:
    """Many matches' stored statistics as one (derived.aggregate), every key present."""
    lines = [derived(text) for text in texts if text]
    if not lines:
        return dict.fromkeys(PLAYER_KEYS)
    total = aggregate(lines)
    return rounded({key: total.get(key) for key in PLAYER_KEYS})


def parse_players_cursor(text: str) -> tuple[int, int] | None:
    """The players page cursor ``"<last_seq>.<id>"``, or None when malformed."""
    left, sep, right = text.partition(".")
    if not sep or not left.isdigit() or not right.isdigit() or len(text) > 40:
        return None
    return int(left), int(right)


def matches_page(conn: Connection, limit: int, before: int | None) -> dict[str, Any]:
    rows = conn.execute(
        f"SELECT {_MATCH_COLUMNS} FROM matches WHERE id < ? ORDER BY id DESC LIMIT ?",  # noqa: S608
        (before if before is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    teams = _teams(conn, [r[0] for r in rows])
    matches = [_match_json(r, teams.get(r[0], [])) for r in rows]
    return {"matches": matches, "next": str(rows[-1][0]) if more else None}


def _teams(conn: Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    out: dict[int, list[dict[str, Any]]] = {}
    for match_id, num, name, score, possession_s, primary, secondary in conn.execute(
        "SELECT match_id, num, name, score, possession_s, color_primary, color_secondary "  # noqa: S608 - only placeholders
        f"FROM match_teams WHERE match_id IN ({marks}) ORDER BY match_id, num",
        list(ids),
    ):
        out.setdefault(match_id, []).append(
            {"num": num, "name": name, "score": score, "possession_s": possession_s,
             "color_primary": primary, "color_secondary": secondary})
    return out


def _car(text: str | None) -> dict[str, Any] | None:
    """A stored ``match_players.car`` (derived.CAR_KEYS), or None."""
    if not text:
        return None
    try:
        loaded = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return loaded if isinstance(loaded, dict) else None


def match(conn: Connection, key: int | str) -> dict[str, Any] | None:
    where = "id = ?" if isinstance(key, int) else "guid = ?"
    row = conn.execute(
        f"SELECT {_MATCH_COLUMNS} FROM matches WHERE {where}", (key,)  # noqa: S608
    ).fetchone()
    if row is None:
        return None
    match_id = row[0]
    out = _match_json(row, _teams(conn, [match_id]).get(match_id, []))
    ended = out["ended_at"] is not None
    out["players"] = [
        {"player_id": r[0], "name": r[1], "primary_id": r[2], "team": r[3],
         **dict(zip(LINE_FIELDS, r[4:-2], strict=True)), "stats": derived(r[-2]),
         "car": None if ended else _car(r[-1])}
        for r in conn.execute(
            "SELECT mp.player_id, mp.name, p.primary_id, mp.team, mp.score, mp.goals, "
            "mp.shots, mp.assists, mp.saves, mp.touches, mp.demos, mp.stats, mp.car "
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
         "impact": None if r[9] is None else {"x": r[9], "y": r[10], "z": r[11]},
         "clock": r[12], "overtime": None if r[13] is None else bool(r[13])}
        for r in conn.execute(
            "SELECT seq, scorer, scorer_id, scorer_team, assister, speed, game_time, "
            "received_at, last_touch, impact_x, impact_y, impact_z, clock, overtime "
            "FROM goals WHERE match_id = ? ORDER BY seq",
            (match_id,),
        )
    ]
    return out


class Careers:
    """Each player's derived statistics over all their matches, kept between reads.

    Summing a career reads every line the player ever played (a busy player's page took
    tens of ms). The store forgets a player here when it commits new statistics for one
    of their lines (StatsDb._keep), so what is kept is what the file holds.
    """

    MAX_KEPT: Final = 10_000

    def __init__(self) -> None:
        self._kept: dict[int, Stats] = {}

    def get(self, conn: Connection, ids: Sequence[int]) -> dict[int, Stats]:
        missing = [i for i in ids if i not in self._kept]
        if missing:
            if len(self._kept) + len(missing) > self.MAX_KEPT:
                self._kept.clear()
            for player_id in missing:
                self._kept[player_id] = dict.fromkeys(PLAYER_KEYS)  # no line with statistics
            self._kept.update(_headlines(conn, missing))
        return {i: dict(self._kept[i]) for i in ids}  # copies: callers may change them

    def forget(self, ids: Iterable[int]) -> None:
        for player_id in ids:
            self._kept.pop(player_id, None)


def _careers(conn: Connection, ids: Sequence[int], careers: Careers | None
             ) -> dict[int, Stats]:
    return careers.get(conn, ids) if careers is not None else _headlines(conn, ids)


def players_page(conn: Connection, limit: int, before: tuple[int, int] | None,
                 careers: Careers | None = None) -> dict[str, Any]:
    last, pid = before if before is not None else (2**63 - 1, 2**63 - 1)
    rows = conn.execute(
        f"SELECT {_PLAYER_COLUMNS} FROM players p "  # noqa: S608 - constants only
        "WHERE (p.last_seq, p.id) < (?, ?) ORDER BY p.last_seq DESC, p.id DESC LIMIT ?",
        (last, pid, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    players = [_player_json(r) for r in rows]
    headlines = _careers(conn, [r[0] for r in rows], careers)
    for one in players:
        stats = headlines.get(one["id"]) or dict.fromkeys(PLAYER_KEYS)
        one["stats"] = {key: stats[key] for key in HEADLINE_KEYS}
    cursor = f"{rows[-1][_PLAYER_LAST_SEQ]}.{rows[-1][0]}" if more else None
    return {"players": players, "next": cursor}


def player(conn: Connection, player_id: int, careers: Careers | None = None
           ) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_PLAYER_COLUMNS} FROM players p WHERE p.id = ?",  # noqa: S608
        (player_id,),
    ).fetchone()
    if row is None:
        return None
    out = _player_json(row)
    out["stats"] = (_careers(conn, [player_id], careers).get(player_id)
                    or dict.fromkeys(PLAYER_KEYS))
    out["recent_matches"] = _player_matches(conn, player_id, _RECENT_MATCHES, None)
    return out


def player_matches_page(conn: Connection, player_id: int, limit: int,
                        before: int | None) -> dict[str, Any] | None:
    """``{"matches": [...], "next": cursor}``: a player's matches, newest first, each as
    in ``recent_matches``; None when there is no such player."""
    if conn.execute("SELECT 1 FROM players WHERE id = ?", (player_id,)).fetchone() is None:
        return None
    matches = _player_matches(conn, player_id, limit + 1, before)
    more = len(matches) > limit
    matches = matches[:limit]
    return {"matches": matches, "next": str(matches[-1]["id"]) if more else None}


def _player_matches(conn: Connection, player_id: int, limit: int,
                    before: int | None) -> list[dict[str, Any]]:
    """A player's matches below match id `before` (all: None), newest first: the match,
    the player's line and derived statistics in it."""
    return [
        {"id": r[0], "guid": r[1], "arena": r[2], "arena_name": arena_name(r[2]),
         "playlist": r[3], "started_at": r[4], "ended_at": r[5], "winner": r[6],
         "team": r[7], "won": None if r[6] is None or r[7] is None else r[6] == r[7],
         **dict(zip(LINE_FIELDS, r[8:-2], strict=True)), "duration_s": r[-2],
         "stats": derived(r[-1])}
        for r in conn.execute(
            "SELECT m.id, m.guid, m.arena, m.playlist, m.started_at, m.ended_at, "
            "m.winner, mp.team, mp.score, mp.goals, mp.shots, mp.assists, mp.saves, "
            "mp.touches, mp.demos, m.duration_s, mp.stats FROM match_players mp "
            "JOIN matches m ON m.id = mp.match_id WHERE mp.player_id = ? "
            "AND mp.match_id < ? ORDER BY mp.match_id DESC LIMIT ?",
            (player_id, _NO_CURSOR if before is None else before, limit),
        )
    ]


def _headlines(conn: Connection, ids: Sequence[int]) -> dict[int, Stats]:
    """Each player's derived statistics over all their matches (derived.aggregate)."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    texts: dict[int, list[str | None]] = {}
    for player_id, text in conn.execute(
        f"SELECT player_id, stats FROM match_players WHERE player_id IN ({marks}) "  # noqa: S608 - only placeholders
        "AND stats IS NOT NULL",
        list(ids),
    ):
        texts.setdefault(player_id, []).append(text)
    return {player_id: _aggregated(lines) for player_id, lines in texts.items()}


_MATCH_COLUMNS: Final = (
    "id, guid, arena, playlist, started_at, ended_at, overtime, winner, offline, "
    "end_reason, time_seconds, duration_s, last_event_at"
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
        "time_seconds": row[10], "arena_name": arena_name(row[2]), "duration_s": row[11],
        "last_event_at": row[12], "teams": teams,
    }


def _player_json(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0], "name": row[1], "primary_id": row[2], "matches": row[3],
        "wins": row[12], "score": row[4], "goals": row[5], "shots": row[6],
        "assists": row[7], "saves": row[8], "touches": row[9], "demos": row[10],
    }
