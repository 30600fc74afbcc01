"""Query API over the statistics: matches and players, JSON, paginated, newest first.

Behind the same bearer token as every /v1/ route (the request middleware checks it).
A cursor (``next``) is opaque to clients: pass it back as ``?before=``. A damaged
stats.db is ``503 stats_unavailable``, its detail naming the file and the fix.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from collector.server.appkeys import STATS
from collector.server.http import ApiError, json_response
from collector.stats.queries import parse_players_cursor
from collector.stats.store import StatsDamagedError

routes = web.RouteTableDef()

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
_MAX_ID: Final = 2**63 - 1
_MAX_GUID: Final = 256


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


def _reads_stats(handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A damaged stats.db is a 503 in the error shape, not a 500 (it is no bug)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StatsDamagedError as exc:
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
    return json_response(await request.app[STATS].matches_page(limit=limit, before=before))


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
    return json_response(await request.app[STATS].players_page(limit=limit, before=before))


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


@routes.get("/v1/stats")
async def stats_counters(request: web.Request) -> web.Response:
    """What the stats handler did: applied, unchanged, replayed, stale, bogus goals."""
    c = request.app[STATS].counters
    return json_response({
        "applied": c.applied, "unchanged": c.unchanged, "replayed": c.replayed,
        "stale_skipped": c.stale_skipped, "bogus_goals": c.bogus_goals,
    })
