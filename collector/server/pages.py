"""The dashboard: HTML pages at stable paths and their static files, from package data.

Every page is the same shell (collector/dashboard/static/page.html) naming which page it
is; its scripts fetch the data from the JSON API with the bearer token the browser keeps,
so the pages themselves hold no data and are not behind the token. Nothing is loaded
from any other host: the Content-Security-Policy allows only the daemon itself, no
inline script or style, and no framing except for /live (an overlay in OBS or another
page).

The static files are listed once at start-up (in the executor); a request can only name
one of them, so no path from a client ever reaches the file system.
"""

from __future__ import annotations

import asyncio
import html
import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from collector import __version__
from collector.dashboard import PAGE_TEMPLATE, STATIC_DIR
from collector.server.http import ApiError

routes = web.RouteTableDef()


class DashboardFiles:
    """The shell page's text and the static files that may be served, by URL path."""

    def __init__(self, template: str, files: dict[str, Path]) -> None:
        self.template = template
        self.files = files

    @classmethod
    def load(cls, root: Path = STATIC_DIR, template: Path = PAGE_TEMPLATE) -> DashboardFiles:
        """Read the shell and list the files (blocking: run it in an executor)."""
        files = {
            path.relative_to(root).as_posix(): path
            for path in sorted(root.rglob("*"))
            if path.is_file() and path != template and not path.name.endswith(".map")
        }
        return cls(template.read_text(encoding="utf-8"), files)


DASHBOARD: Final = web.AppKey("dashboard", DashboardFiles)

#: Each page's title (the <title> of its shell).
_PAGES: Final = {
    "home": "collector",
    "match": "Match",
    "player": "Player",
    "session": "Session",
    "live": "Live",
    "system": "System",
}

_CSP: Final = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
))
#: Headers on every page and static file.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": f"{_CSP}; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: /live may be framed (an overlay inside another page or a streaming tool); it only reads.
_FRAMEABLE: Final = {
    **{k: v for k, v in SECURITY_HEADERS.items() if k != "X-Frame-Options"},
    "Content-Security-Policy": f"{_CSP}; frame-ancestors *",
}
_TYPES: Final = {
    ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
    ".json": "application/json", ".md": "text/markdown", ".png": "image/png",
}


async def dashboard_ctx(app: web.Application) -> AsyncIterator[None]:
    """List the dashboard's files once, off the event loop."""
    app[DASHBOARD] = await asyncio.get_running_loop().run_in_executor(None, DashboardFiles.load)
    yield


def _page(request: web.Request, page: str) -> web.Response:
    text = request.app[DASHBOARD].template
    for key, value in (("page", page), ("title", _PAGES[page]), ("version", __version__)):
        text = text.replace("{{" + key + "}}", html.escape(value))
    headers = _FRAMEABLE if page == "live" else SECURITY_HEADERS
    return web.Response(text=text, content_type="text/html", charset="utf-8",
                        headers={**headers, hdrs.CACHE_CONTROL: "no-cache"})


#: The pages at their stable paths (the ids are those of the JSON API).
_PATHS: Final = {
    "/": "home",  # the live match, recent matches and sessions, players
    "/matches/{id}": "match",  # scoreboard, goals, the players' statistics side by side
    "/players/{id}": "player",  # career figures, trends over their matches, sessions
    "/sessions/{id}": "session",  # its matches, wins and losses, streak, averages
    "/live": "live",  # the current match following /v1/live; ?overlay=1 for OBS
    "/system": "system",  # the queue's health and the dead letters, for the operator
}


def _page_handler(page: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return _page(request, page)

    handler.__name__ = handler.__qualname__ = f"{page}_page"
    return handler


for _path, _name in _PATHS.items():
    routes.get(_path)(_page_handler(_name))


@routes.get("/static/{path:.+}")
async def static(request: web.Request) -> web.StreamResponse:
    """A file of the dashboard (only those listed at start-up)."""
    path = request.app[DASHBOARD].files.get(request.match_info["path"])
    if path is None:
        raise ApiError(404, "not_found", f"nothing at {request.path}")
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    headers = {**SECURITY_HEADERS, hdrs.CACHE_CONTROL: "no-cache",
               hdrs.CONTENT_TYPE: content_type or "application/octet-stream"}
    return web.FileResponse(path, headers=headers)
