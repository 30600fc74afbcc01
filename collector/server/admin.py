"""Operator endpoints: /metrics, dead letters, a look at the line, export of pending jobs.

Everything under /v1/ is behind the bearer token (api.endpoint checks it);
/metrics is open, like /healthz: it holds counts and timings, never event data.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import hdrs, web

from collector.errors import QueueClosedError, StorageError
from collector.jobs import job_json
from collector.queue import JobQueue, dead_json
from collector.server.appkeys import METRICS, POSTGRES, QUEUE
from collector.server.http import ApiError, json_response

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

NDJSON: Final = "application/x-ndjson"
_MAX_LIMIT: Final = 1000
_PAGE: Final = 1000
_EXPORT_CHUNK: Final = 256  # lines per write of the export stream


_Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _database(route: _Route) -> _Route:
    """In the PostgreSQL mode, the database unreachable or too slow is a 503 with
    Retry-After (SQLite mode: unchanged)."""

    @functools.wraps(route)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await route(request)
        except StorageError as exc:
            if POSTGRES not in request.app:
                raise
            raise ApiError(503, "storage_unavailable", str(exc),
                           headers={hdrs.RETRY_AFTER: "5"}) from None

    return wrapped


def _int_param(query: Mapping[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError(400, "invalid_parameter", f"{name}: an integer from {lo} to {hi} expected")
    return int(raw)


def _at_tail(value: object) -> bool:
    if value in (None, "place"):
        return False
    if value == "tail":
        return True
    raise ApiError(400, "invalid_parameter", "at: 'place' (old seq, next in line) or 'tail'")


def _seq(request: web.Request) -> int:
    return int(request.match_info["seq"])


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process."""
    body, content_type = await request.app[METRICS].render(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


@routes.get("/v1/dead")
@_database
async def list_dead(request: web.Request) -> web.Response:
    """Dead letters in seq order: ?limit= (at most 1000) &offset=."""
    limit = _int_param(request.query, "limit", 100, lo=1, hi=_MAX_LIMIT)
    offset = _int_param(request.query, "offset", 0, lo=0, hi=2**62)
    queue = request.app[QUEUE]
    dead = await queue.dead_letters(limit=limit, offset=offset)
    total = (await queue.stats()).dead
    return json_response({"dead": [dead_json(d) for d in dead], "total": total,
                          "offset": offset, "limit": limit})


@routes.get(r"/v1/dead/{seq:\d{1,18}}")
@_database
async def show_dead(request: web.Request) -> web.Response:
    """One dead letter with its last error."""
    dead = await request.app[QUEUE].dead_letter_get(_seq(request))
    if dead is None:
        raise ApiError(404, "not_found", f"no dead letter with seq {_seq(request)}")
    return json_response(dead_json(dead))


async def _retry(queue: JobQueue, seqs: list[int], *, at_tail: bool) -> web.Response:
    try:
        revived = await queue.retry_dead(seqs, at_tail=at_tail)
    except QueueClosedError:
        raise ApiError(503, "shutting_down", "the server is shutting down",
                       headers={hdrs.RETRY_AFTER: "5"}) from None
    # In place the jobs keep their seqs; at the tail these are their new seqs, in order.
    return json_response({"retried": len(revived), "seqs": [job.seq for job in revived],
                          "at": "tail" if at_tail else "place"})


@routes.post(r"/v1/dead/{seq:\d{1,18}}/retry")
@_database
async def retry_one(request: web.Request) -> web.Response:
    """Put one dead letter back: ?at=place (default: its old seq, next in line) or ?at=tail."""
    at_tail = _at_tail(request.query.get("at"))
    queue = request.app[QUEUE]
    if await queue.dead_letter_get(_seq(request)) is None:
        raise ApiError(404, "not_found", f"no dead letter with seq {_seq(request)}")
    return await _retry(queue, [_seq(request)], at_tail=at_tail)


@routes.delete(r"/v1/dead/{seq:\d{1,18}}")
@_database
async def drop_one(request: web.Request) -> web.Response:
    """Delete one dead letter for good."""
    if not await request.app[QUEUE].drop_dead([_seq(request)]):
        raise ApiError(404, "not_found", f"no dead letter with seq {_seq(request)}")
    return json_response({"dropped": 1})


async def _selection(request: web.Request) -> tuple[list[int], dict[str, Any]]:
    """The seqs named by a JSON body {"seqs": [...]} or {"all": true}, and the body."""
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", 'a JSON object {"seqs": [...]} or {"all": true}')
    if body.get("all") is True:
        return await request.app[QUEUE].dead_seqs(), body
    seqs = body.get("seqs")
    if not isinstance(seqs, list) or not seqs or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**63 for s in seqs
    ):
        raise ApiError(400, "invalid_json", '"seqs": a non-empty list of positive integers')
    return seqs, body


@routes.post("/v1/dead/retry")
@_database
async def retry_many(request: web.Request) -> web.Response:
    """Put dead letters back in one step, so they keep their order among themselves."""
    seqs, body = await _selection(request)
    at_tail = _at_tail(body.get("at", request.query.get("at")))
    return await _retry(request.app[QUEUE], seqs, at_tail=at_tail)


@routes.post("/v1/dead/drop")
@_database
async def drop_many(request: web.Request) -> web.Response:
    """Delete dead letters for good."""
    seqs, _body = await _selection(request)
    dropped = await request.app[QUEUE].drop_dead(seqs) if seqs else 0
    return json_response({"dropped": dropped})


@routes.get("/v1/queue/peek")
@_database
async def peek(request: web.Request) -> web.Response:
    """The next jobs in line (the one in flight first), without taking them: ?limit=."""
    limit = _int_param(request.query, "limit", 10, lo=1, hi=_MAX_LIMIT)
    jobs = await request.app[QUEUE].peek(limit)
    return json_response({"jobs": [job_json(j) for j in jobs]})


@routes.get("/v1/pending")
@_database
async def export_pending(request: web.Request) -> web.StreamResponse:
    """Every pending job as JSON lines, in seq order (a copy: the worker carries on).

    The first page is read before the answer begins, so that a database that cannot be
    read is still a 503 (PostgreSQL mode). Once it has begun, a failure ends the
    connection before the body's last chunk: the client sees an incomplete answer,
    never a short export that looks whole, nor a hang."""
    queue = request.app[QUEUE]
    pending = queue.pending
    if POSTGRES in request.app:  # a follower's `pending` is 0: count the shared log
        numbers = await queue.stats()
        pending = numbers.pending + numbers.in_flight
    jobs = aiter(queue.pending_jobs(page=_PAGE))
    first = await anext(jobs, None)
    resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: NDJSON,
                                       "X-Pending-Count": str(pending)})
    await resp.prepare(request)
    lines: list[bytes] = []
    written = 0
    try:
        if first is not None:
            lines.append(orjson.dumps(job_json(first)))
            async for job in jobs:
                lines.append(orjson.dumps(job_json(job)))
                if len(lines) >= _EXPORT_CHUNK:
                    await resp.write(b"\n".join(lines) + b"\n")
                    written += len(lines)
                    lines.clear()
        if lines:
            await resp.write(b"\n".join(lines) + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        log.info("export_aborted", reason="the client went away")
    except StorageError as exc:
        log.error("export_failed", error=str(exc), jobs_sent=written)
        if request.transport is not None:
            request.transport.close()  # no last chunk: the client cannot take it as whole
    return resp
