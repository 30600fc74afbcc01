"""The live feed's hub: the current match, read once and sent to every client.

The stats store calls :meth:`LiveHub.changed` on the event loop after each applied job
or run (``StatsStore.on_applied``); it only marks the match ids and wakes the hub's
task, so the worker never waits for a client. That task reads the current match at
most once per ``interval_s``, encodes it once, and offers the same bytes to each
client's slot. A slot holds one frame: a newer one replaces an unsent one, so a slow
client only misses intermediate states. Each client's own request task writes its
slot; one whose write does not finish within ``write_timeout_s`` is dropped, and so is
one whose connection closed (looked at every second: aiohttp does not cancel it).

"Current" is the most recently changed match that is live (not ended); a change to an
ended match does not take the feed away from a live one. When no match is live, it is
the most recently changed one (at start, the newest): its ``ended_at`` says it is over.
Before the first match there is none, and the hub says so with an ``idle`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import orjson
import structlog
from aiohttp import hdrs, web

from collector.stats.backend import StatsUnavailableError
from collector.stats.store import StatsStore

log = structlog.get_logger(__name__)

#: What a client gets while stats.db holds no match at all.
IDLE_FRAME: Final = b'event: idle\ndata: {"live":false}\n\n'
HEARTBEAT: Final = b": ping\n\n"
#: Changed matches read per refresh (the newest ids); a run rarely spans more than two.
_READ_AT_ONCE: Final = 8
#: Live matches remembered (several feeds at once); the least recently changed go first.
_LIVE_KEPT: Final = 16
#: How often an idle stream looks whether its client went away (between heartbeats).
_GONE_CHECK_S: Final = 1.0
SSE_HEADERS: Final = {
    hdrs.CONTENT_TYPE: "text/event-stream",
    hdrs.CACHE_CONTROL: "no-cache",
    # nginx buffers proxied answers unless told not to; a buffered event stream is late.
    "X-Accel-Buffering": "no",
}


class _Client:
    """One connected client: the frame waiting for it (at most one) and its wake-up."""

    __slots__ = ("frame", "transport", "wake", "writing")

    def __init__(self, frame: bytes, transport: asyncio.Transport | None) -> None:
        self.frame: bytes | None = frame
        self.transport = transport
        self.wake = asyncio.Event()
        self.writing = False

    def offer(self, frame: bytes) -> None:
        """Replace whatever was not sent yet with `frame`."""
        self.frame = frame
        self.wake.set()

    @property
    def gone(self) -> bool:
        """The connection was closed (by the peer, or aborted)."""
        return self.transport is None or self.transport.is_closing()

    def take(self) -> bytes | None:
        frame, self.frame = self.frame, None
        self.wake.clear()
        return frame


class LiveHub:
    """The current match for every client of GET /v1/live (Server-Sent Events)."""

    def __init__(
        self,
        store: StatsStore,
        *,
        max_clients: int = 100,
        interval_s: float = 0.1,
        heartbeat_s: float = 15.0,
        write_timeout_s: float = 30.0,
        retry_ms: int = 3000,
    ) -> None:
        self._store = store
        #: Options, read at each use (tests shorten them on a running hub).
        self.max_clients = max_clients
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.retry_ms = retry_ms
        self._clients: set[_Client] = set()
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._current_id: int | None = None
        #: Matches seen live (not ended), the most recently changed last.
        self._live: dict[int, None] = {}
        self._body = b""
        self._frame = IDLE_FRAME
        self._version = 0
        self._failing = False
        self._rescan = False
        #: Documents sent to the clients (one per change of the current match's JSON).
        self.published = 0
        #: Clients dropped because a write did not finish in time or the peer was gone.
        self.dropped = 0

    # -- state -------------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    @property
    def current_id(self) -> int | None:
        """The id of the match the feed shows (None: no match yet)."""
        return self._current_id

    @property
    def full(self) -> bool:
        """No room for one more client."""
        return sum(not client.gone for client in self._clients) >= self.max_clients

    @property
    def closing(self) -> bool:
        """The streams were closed (the application stops)."""
        return self._closing

    def changed(self, match_ids: frozenset[int]) -> None:
        """StatsStore.on_applied: these matches changed. Marks them; never waits."""
        if match_ids:
            self._dirty |= match_ids
            self._wake.set()

    def resync(self) -> None:
        """Changes may have been missed (the PostgreSQL mode's notifications, while its
        connection was lost): read the newest matches again."""
        self._rescan = True
        self._wake.set()

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the newest match, then follow changes in a task of its own."""
        await self._guarded_refresh(set())
        self._task = asyncio.create_task(self._run(), name="collector-live")

    def close_streams(self) -> None:
        """End every stream now and refuse new ones (the application stops)."""
        self._closing = True
        for client in self._clients:
            client.wake.set()
            if client.writing and client.transport is not None:
                # Blocked on a peer that does not read: waiting for it would hold the
                # graceful stop until shutdown_timeout.
                client.transport.abort()

    async def stop(self) -> None:
        """Close the streams and end the hub's task."""
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            await self._guarded_refresh(dirty)
            # The rate limit: changes that arrive meanwhile wait, and are read together.
            await asyncio.sleep(self.interval_s)

    async def _guarded_refresh(self, dirty: set[int]) -> None:
        try:
            await self._refresh(dirty)
        except StatsUnavailableError:
            self._failing = True  # the store said it once, with the fix (stats_damaged)
        except Exception:
            # Say once that the feed stands still (a damaged stats.db, say), not at every
            # change. The next change tries again.
            if not self._failing:
                log.exception("live_refresh_failed")
            self._failing = True
        else:
            self._failing = False

    async def _refresh(self, dirty: set[int]) -> None:
        """Choose and read the current match; offer it to every client if its JSON changed."""
        store = self._store
        if self._rescan:
            self._rescan = False
            page = await store.matches_page(limit=_READ_AT_ONCE)
            dirty = dirty | {int(m["id"]) for m in page["matches"]}
        docs: dict[int, dict[str, Any]] = {}
        # Within one read, a higher id (a newer match) counts as the later change.
        for match_id in sorted(dirty)[-_READ_AT_ONCE:]:
            doc = await store.match(match_id)
            self._live.pop(match_id, None)
            if doc is None:
                continue
            docs[match_id] = doc
            if doc["ended_at"] is None:
                self._live[match_id] = None
                if len(self._live) > _LIVE_KEPT:
                    del self._live[next(iter(self._live))]
        chosen: dict[str, Any] | None = None
        while self._live:
            # The most recently changed live match; one that ended unseen (closed when
            # idle, say) is forgotten on the way.
            match_id = next(reversed(self._live))
            if match_id == self._current_id and match_id not in dirty:
                return  # still the current one, and unchanged
            doc = docs.get(match_id) or await store.match(match_id)
            if doc is not None and doc["ended_at"] is None:
                chosen = doc
                break
            del self._live[match_id]
        if chosen is None and docs:
            chosen = docs[max(docs)]  # none live: the one that changed (ended, say)
        if chosen is None:
            if dirty and self._current_id is not None and self._current_id not in dirty:
                return  # changes that were not to be seen; the current one stands
            page = await store.matches_page(limit=1)  # at start: the newest match
            if page["matches"]:
                chosen = await store.match(page["matches"][0]["id"])
            if chosen is not None and chosen["ended_at"] is None:
                self._live[int(chosen["id"])] = None
        self._publish(chosen)

    def _publish(self, doc: dict[str, Any] | None) -> None:
        body = IDLE_FRAME if doc is None else orjson.dumps(doc)
        self._current_id = None if doc is None else int(doc["id"])
        if body == self._body:
            return
        self._body = body
        self._version += 1
        self.published += 1
        self._frame = (
            IDLE_FRAME if doc is None
            else b"id: %d\nevent: match\ndata: %s\n\n" % (self._version, body)
        )
        for client in self._clients:
            client.offer(self._frame)

    # -- one client --------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Serve one client until it goes, falls behind, or the application stops.

        The caller checks `full` and `closing` first (and answers the JSON errors).
        """
        resp = web.StreamResponse(headers=SSE_HEADERS)
        if request.method == hdrs.METH_HEAD:
            return resp
        client = _Client(self._frame, request.transport)
        self._clients.add(client)
        try:
            await resp.prepare(request)
            await self._write(resp, client, b"retry: %d\n\n" % self.retry_ms)
            while (frame := client.take() or await self._next(client)) is not None:
                await self._write(resp, client, frame)
        except (ConnectionError, TimeoutError) as exc:
            # Gone, or not reading: nothing to report beyond a debug line. The connection
            # is aborted so that aiohttp's end of the answer cannot wait on it.
            self.dropped += 1
            log.debug("live_client_dropped", reason=type(exc).__name__)
            if client.transport is not None:
                client.transport.abort()
        finally:
            self._clients.discard(client)
        return resp

    async def _next(self, client: _Client) -> bytes | None:
        """What to send `client` next: an offered frame, else a heartbeat after
        heartbeat_s; None once the streams are closed."""
        loop = asyncio.get_running_loop()
        heartbeat_at = loop.time() + self.heartbeat_s
        while not (self._closing or client.wake.is_set()):
            left = heartbeat_at - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, _GONE_CHECK_S)):
                    await client.wake.wait()
            if client.gone:
                # aiohttp does not cancel the handler of a closed connection: look.
                raise ConnectionResetError("the client went away")
        return None if self._closing else client.take() or HEARTBEAT

    async def _write(self, resp: web.StreamResponse, client: _Client, data: bytes) -> None:
        client.writing = True
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await resp.write(data)
        finally:
            client.writing = False
