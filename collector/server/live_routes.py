"""GET /v1/live: the current match as Server-Sent Events (the hub is collector.server.live).

Behind the same bearer token as every /v1/ route (http.endpoint checks it before the
stream starts, so a refusal is an ordinary JSON error).
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

from collector.server.appkeys import LIVE, STATE
from collector.server.http import ApiError

routes = web.RouteTableDef()

_RETRY_FULL: Final = "10"
_RETRY_STOPPING: Final = "5"


@routes.get("/v1/live")
async def live(request: web.Request) -> web.StreamResponse:
    """``event: match`` with the current match at once, then on each change (<= 10/s)."""
    hub = request.app[LIVE]
    if hub.closing or request.app[STATE].stopping:
        raise ApiError(503, "shutting_down", "the server is stopping",
                       headers={hdrs.RETRY_AFTER: _RETRY_STOPPING})
    if hub.full:
        raise ApiError(503, "too_many_clients",
                       f"the live feed already serves {hub.clients} clients",
                       headers={hdrs.RETRY_AFTER: _RETRY_FULL})
    return await hub.stream(request)
