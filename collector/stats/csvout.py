"""The statistics as CSV: one place for the API's ``?format=csv`` and the CLI's ``--csv``.

Rows are built from the documents of the query API (a match with its player lines, a
player, a session), so the daemon and a command reading the data dir print the same.
The text is RFC 4180 (the stdlib csv module, CRLF line ends, UTF-8), with a header line.

Player names are chosen by strangers, and a spreadsheet runs a cell that starts with
``=``, ``+``, ``-`` or ``@`` as a formula (and some strip a leading tab or carriage
return first). Every text cell starting with one of them gets a leading ``'`` (OWASP's
advice against CSV injection); numbers stay numbers, negative ones included. None is an
empty cell, True and False are 1 and 0.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from collector.stats.derived import PLAYER_KEYS
from collector.stats.schema import LINE_FIELDS

#: A text cell starting with one of these is read as a formula by some spreadsheet.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")

MATCH_HEADER: Final = (
    "match_id", "guid", "started_at", "started_utc", "arena", "playlist", "team", "won",
    "player_id", "player", "primary_id", *LINE_FIELDS, *PLAYER_KEYS,
)
PLAYER_HEADER: Final = (
    "player_id", "player", "primary_id", "matches", "wins", *LINE_FIELDS, *PLAYER_KEYS,
)
SESSION_HEADER: Final = (
    "session_id", "player_id", "player", "started_at", "started_utc", "ended_at",
    "matches", "wins", "losses", "streak", *LINE_FIELDS, *PLAYER_KEYS,
)


def safe_cell(value: Any) -> Any:
    """A value a spreadsheet shows and never runs: text that could start a formula gets a
    leading ``'``; numbers are left as they are; None is empty; booleans are 1 and 0."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def rows_to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The header line and the rows as CSV text, every cell through :func:`safe_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the excel dialect: CRLF, quotes where needed
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return buffer.getvalue()


def _utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stats(stats: Mapping[str, Any] | None) -> list[Any]:
    stats = stats or {}
    return [stats.get(key) for key in PLAYER_KEYS]


def _line(numbers: Mapping[str, Any]) -> list[Any]:
    return [numbers.get(field) for field in LINE_FIELDS]


def matches_csv(matches: Iterable[Mapping[str, Any]]) -> str:
    """One row per player line of each match (``GET /v1/matches/{id}`` documents)."""
    rows = []
    for match in matches:
        winner = match.get("winner")
        for p in match.get("players") or []:
            team = p.get("team")
            won = None if winner is None or team is None else winner == team
            rows.append([
                match["id"], match.get("guid"), match.get("started_at"),
                _utc(match.get("started_at")), match.get("arena"), match.get("playlist"),
                team, won, p.get("player_id"), p.get("name"), p.get("primary_id"),
                *_line(p), *_stats(p.get("stats")),
            ])
    return rows_to_csv(MATCH_HEADER, rows)


def players_csv(players: Iterable[Mapping[str, Any]]) -> str:
    """One row per player: career totals and aggregated statistics
    (``GET /v1/players/{id}`` documents)."""
    return rows_to_csv(PLAYER_HEADER, (
        [p["id"], p.get("name"), p.get("primary_id"), p.get("matches"), p.get("wins"),
         *_line(p), *_stats(p.get("stats"))]
        for p in players
    ))


def sessions_csv(sessions: Iterable[Mapping[str, Any]]) -> str:
    """One row per player-session: its totals and aggregated statistics."""
    rows = []
    for s in sessions:
        matches = s.get("matches")
        count = len(matches) if isinstance(matches, list) else matches
        streak = s.get("streak")
        player = s.get("player") or {}
        rows.append([
            s["id"], player.get("id"), player.get("name"), s.get("started_at"),
            _utc(s.get("started_at")), s.get("ended_at"), count, s.get("wins"),
            s.get("losses"), None if not streak else f"{streak['kind']}{streak['length']}",
            *_line(s.get("totals") or {}), *_stats(s.get("stats")),
        ])
    return rows_to_csv(SESSION_HEADER, rows)
