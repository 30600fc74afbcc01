"""Query API over the statistics: matches, players and sessions, paginated, newest first.

Behind the same bearer token as every /v1/ route (the request middleware checks it).
A cursor (``next``) is opaque to clients: pass it back as ``?before=``. A damaged
stats.db is ``503 stats_unavailable``, its detail naming the file and the fix.
``?format=csv`` on the lists answers ``text/csv`` (collector.stats.csvout), the next
page's cursor in the ``X-Next-Cursor`` header.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from collector.server.appkeys import SETTINGS, STATS
from collector.server.http import ApiError, json_response
from collector.stats import csvout
from collector.stats.backend import StatsUnavailableError
from collector.stats.queries import parse_players_cursor
from collector.stats.sessions import parse_session_id
from collector.stats.store import StatsStore

routes = web.RouteTableDef()

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
_MAX_ID: Final = 2**63 - 1
_MAX_GUID: Final = 256
_FORMATS: Final = ("json", "csv")
#: The header that carries the next page's cursor of a CSV answer (absent: last page).
NEXT_CURSOR_HEADER: Final = "X-Next-Cursor"


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, "invalid_parameter",
                       f"limit: an integer from 1 to {MAX_LIMIT} expected")
    return int(text)


def _match_cursor(request: web.Request) -> int | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _MAX_ID:
        raise ApiError(400, "invalid_parameter", "before: a cursor from a previous page expected")
    return int(text)


def _player_cursor(request: web.Request) -> tuple[int, int] | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    cursor = parse_players_cursor(raw.strip()) if raw.isascii() else None
    if cursor is None or max(cursor) > _MAX_ID:
        raise ApiError(400, "invalid_parameter", "before: a cursor from a previous page expected")
    return cursor


def _csv(request: web.Request) -> bool:
    """Whether ``?format=csv`` asks for CSV (``json``, the default, or ``csv``)."""
    raw = request.query.get("format", "json").strip().lower()
    if raw not in _FORMATS:
        raise ApiError(400, "invalid_parameter", "format: json or csv expected")
    return raw == "csv"


def _csv_response(text: str, name: str, cursor: str | None) -> web.Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
    if cursor is not None:
        headers[NEXT_CURSOR_HEADER] = cursor
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers=headers)


def _session_cursor(request: web.Request) -> tuple[int, int] | None:
    raw = request.query.get("before")
    if raw is None:
        return None
    cursor = parse_session_id(raw.strip())
    if cursor is None:
        raise ApiError(400, "invalid_parameter", "before: a cursor from a previous page expected")
    return cursor


def _player_filter(request: web.Request) -> int | None:
    raw = request.query.get("player")
    if raw is None:
        return None
    player = _numeric_id(raw.strip())
    if player is None:
        raise ApiError(400, "invalid_parameter", "player: a player id expected")
    return player


def _gap_s(request: web.Request) -> float:
    """The gap that splits sessions, in seconds ([stats] session_gap_minutes)."""
    return request.app[SETTINGS].stats.session_gap_minutes * 60.0


async def _details(store: StatsStore, kind: str, ids: list[int]) -> list[dict[str, Any]]:
    """The full documents of a page's rows (for CSV), in the page's order."""
    docs = []
    for key in ids:
        doc = await (store.match(key) if kind == "match" else store.player(key))
        if doc is not None:  # gone between the two reads: nothing to print
            docs.append(doc)
    return docs


def _reads_stats(handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A damaged stats.db is a 503 in the error shape, not a 500 (it is no bug)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StatsUnavailableError as exc:
            raise ApiError(503, "stats_unavailable", str(exc)) from None

    return wrapped


def _numeric_id(text: str) -> int | None:
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= _MAX_ID:
        return int(text)
    return None


@routes.get("/v1/matches")
@_reads_stats
async def list_matches(request: web.Request) -> web.Response:
    """Matches, newest first: ``{"matches": [...], "next": cursor or null}``."""
    limit = _limit(request)
    before = _match_cursor(request)
    csv = _csv(request)
    store = request.app[STATS]
    page = await store.matches_page(limit=limit, before=before)
    if not csv:
        return json_response(page)
    matches = await _details(store, "match", [m["id"] for m in page["matches"]])
    return _csv_response(csvout.matches_csv(matches), "matches", page["next"])


@routes.get("/v1/matches/{id}")
@_reads_stats
async def get_match(request: web.Request) -> web.Response:
    """One match (by id, or by its guid) with its player lines and goals."""
    key = request.match_info["id"]
    numeric = _numeric_id(key)
    match = None
    if numeric is not None:
        match = await request.app[STATS].match(numeric)
    elif len(key) <= _MAX_GUID:
        match = await request.app[STATS].match(key)
    if match is None:
        raise ApiError(404, "not_found", f"no match {key!r}")
    return json_response(match)


@routes.get("/v1/players")
@_reads_stats
async def list_players(request: web.Request) -> web.Response:
    """Players with career totals, most recently active first."""
    limit = _limit(request)
    before = _player_cursor(request)
    csv = _csv(request)
    store = request.app[STATS]
    page = await store.players_page(limit=limit, before=before)
    if not csv:
        return json_response(page)
    players = await _details(store, "player", [p["id"] for p in page["players"]])
    return _csv_response(csvout.players_csv(players), "players", page["next"])


@routes.get("/v1/players/{id}")
@_reads_stats
async def get_player(request: web.Request) -> web.Response:
    """A player's career totals and their recent matches."""
    key = request.match_info["id"]
    numeric = _numeric_id(key)
    player = None if numeric is None else await request.app[STATS].player(numeric)
    if player is None:
        raise ApiError(404, "not_found", f"no player {key!r}")
    return json_response(player)


@routes.get("/v1/players/{id}/matches")
@_reads_stats
async def list_player_matches(request: web.Request) -> web.Response:
    """A player's matches, newest first: ``{"matches": [...], "next": cursor or null}``,
    each entry as in the player's ``recent_matches`` (for trend charts)."""
    key = request.match_info["id"]
    numeric = _numeric_id(key)
    limit = _limit(request)
    before = _match_cursor(request)
    page = None if numeric is None else await request.app[STATS].player_matches(
        numeric, limit=limit, before=before)
    if page is None:
        raise ApiError(404, "not_found", f"no player {key!r}")
    return json_response(page)


@routes.get("/v1/sessions")
@_reads_stats
async def list_sessions(request: web.Request) -> web.Response:
    """Player sessions, newest first: ``{"sessions": [...], "next": cursor or null}``;
    ``?player=ID`` keeps that player's."""
    limit = _limit(request)
    before = _session_cursor(request)
    player = _player_filter(request)
    csv = _csv(request)
    page = await request.app[STATS].sessions_page(gap_s=_gap_s(request), limit=limit,
                                                  before=before, player=player)
    if page is None:
        raise ApiError(400, "invalid_parameter", "before: a cursor from a previous page expected")
    if csv:
        return _csv_response(csvout.sessions_csv(page["sessions"]), "sessions", page["next"])
    return json_response(page)


@routes.get("/v1/sessions/{id}")
@_reads_stats
async def get_session(request: web.Request) -> web.Response:
    """One session with its matches (each with the player's line and statistics)."""
    key = request.match_info["id"]
    parsed = parse_session_id(key)
    if parsed is None:
        raise ApiError(400, "invalid_parameter",
                       "id: a session id (<player id>.<first match id>) expected")
    session = await request.app[STATS].session(parsed, gap_s=_gap_s(request))
    if session is None:
        raise ApiError(404, "not_found", f"no session {key!r}")
    return json_response(session)


@routes.get("/v1/stats")
@_reads_stats
async def stats_counters(request: web.Request) -> web.Response:
    """What the stats handler did: applied, unchanged, replayed (this process), stale and
    bogus goals (totals, the same on every node)."""
    c = await request.app[STATS].refresh_counters()
    return json_response({
        "applied": c.applied, "unchanged": c.unchanged, "replayed": c.replayed,
        "stale_skipped": c.stale_skipped, "bogus_goals": c.bogus_goals,
    })
