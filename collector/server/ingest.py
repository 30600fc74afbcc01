"""The ingest route (POST /v1/events) and the queue's status routes (/v1/queue,
/healthz, /readyz).
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Any, Final

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from collector.errors import QueueClosedError, QueueFullError, StorageError, StorageFullError
from collector.server.appkeys import POSTGRES, QUEUE, SETTINGS, STATE, WORKER
from collector.server.http import ApiError, json_response

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()


_JSON_TYPES: Final = frozenset({"application/json", "text/json"})
_NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl",
     "application/x-jsonlines", "application/jsonlines"}
)
_IDENTITY: Final = frozenset({"", "identity"})
_ENCODINGS: Final = _IDENTITY | {"gzip", "x-gzip", "deflate"}
_BIG: Final = 2.0**63
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_MAX_SEQUENCE: Final = 2**63 - 1
_MAX_HEADER_TEXT: Final = 256
_RETRY_FULL: Final = "1"
_RETRY_STOPPING: Final = "5"


def _scan(value: dict[str, Any] | list[Any], limit: int) -> tuple[bool, bool]:
    """(nesting within `limit` containers, holds a float that may be a rounded integer).

    orjson parses an integer beyond 64 bits as a float; such a float is integral and at
    least 2**63 in size. Only then is the body parsed again, exactly (see _exact).
    """
    suspicious = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False, suspicious
        for v in item.values() if isinstance(item, dict) else item:
            if isinstance(v, dict | list):
                stack.append((v, depth + 1))
            elif type(v) is float and abs(v) >= _BIG and v.is_integer():
                suspicious = True
    return True, suspicious


def _exact(data: bytes) -> None:
    """Parse `data` again with exact integers; an integer beyond 64 bits is an ApiError."""

    def exact_int(text: str) -> int:
        number = int(text)
        if not _INT_MIN <= number <= _INT_MAX:
            raise ValueError(f"integer {text[:24]}... is outside the 64-bit range")
        return number

    try:
        json.loads(data, parse_int=exact_int)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


def _inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate body, refusing output beyond `limit` bytes (gzip bombs).

    aiohttp's own decompression is switched off (auto_decompress=False) so that an
    encoding we do not take is a 415 in our JSON shape, not the parser's plain text.
    """
    if encoding == "deflate":
        # HTTP says zlib-wrapped, some clients send raw deflate: tell them apart.
        zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS | 16  # gzip
    out = bytearray()
    data = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise ApiError(413, "too_large", f"body inflates past {limit} bytes")
            if not inflater.eof:
                raise ApiError(400, "invalid_json", f"the {encoding} body is truncated")
            data = inflater.unused_data
            if not data or wbits != zlib.MAX_WBITS | 16:
                break  # gzip may hold several members; anything else ends here
    except zlib.error as exc:
        raise ApiError(400, "invalid_json", f"the {encoding} body is corrupt: {exc}") from None
    if data:
        raise ApiError(400, "invalid_json", f"trailing bytes after the {encoding} stream")
    return bytes(out)


def _parse_events(body: bytes, ndjson: bool, max_depth: int) -> tuple[list[Any], bytes]:
    """Events (JSON objects, in order) and the bytes to store: a JSON array of them, made
    of the bytes received (an array body is stored as it came)."""
    if ndjson:
        events: list[Any] = []
        blobs: list[bytes] = []
        for number, line in enumerate(body.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ApiError(400, "invalid_json", f"line {number}: {exc}") from None
            if _check_event(event, max_depth, where=f"line {number}"):
                _exact(line)
            events.append(event)
            blobs.append(line)
        if not events:
            raise ApiError(400, "invalid_event", "the body holds no event")
        return events, b"[" + b",".join(blobs) + b"]"
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    if isinstance(value, list):
        if not value:
            raise ApiError(400, "invalid_event", "the array holds no event")
        suspicious = False
        for index, event in enumerate(value):
            suspicious |= _check_event(event, max_depth, where=f"event {index}")
        if suspicious:
            _exact(body)
        return value, body
    if _check_event(value, max_depth, where="the body"):
        _exact(body)
    return [value], b"[" + body + b"]"


def _check_event(event: Any, max_depth: int, *, where: str) -> bool:
    """Refuse what is not a JSON object or nests too deeply; True if _exact must look."""
    if not isinstance(event, dict):
        kind = type(event).__name__ if event is not None else "null"
        raise ApiError(400, "invalid_event", f"{where}: an event must be a JSON object, not {kind}")
    depth_ok, suspicious = _scan(event, max_depth)
    if not depth_ok:
        raise ApiError(400, "invalid_event", f"{where}: nested deeper than {max_depth} levels")
    return suspicious


def _text_header(request: web.Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_HEADER_TEXT or not value.isprintable():
        raise ApiError(400, "invalid_header",
                       f"{name}: 1 to {_MAX_HEADER_TEXT} printable characters expected")
    return value


def _sequence_header(request: web.Request, count: int) -> int | None:
    raw = request.headers.get("X-Sequence")
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise ApiError(400, "invalid_header", "X-Sequence: a non-negative integer expected")
    number = int(text)
    if number + count - 1 > _MAX_SEQUENCE:
        raise ApiError(400, "invalid_header", f"X-Sequence: the batch must end <= {_MAX_SEQUENCE}")
    return number


def _too_large(limit: int) -> ApiError:
    """The 413 for a body over `limit` bytes; the connection closes (any rest is unread)."""
    return ApiError(413, "too_large", f"body over {limit} bytes", close=True)


def _body_kind(request: web.Request) -> bool:
    """True for NDJSON, False for JSON; anything else is a 415."""
    if hdrs.CONTENT_TYPE not in request.headers:
        return False  # no Content-Type: take it as JSON
    ctype = request.content_type
    if ctype in _JSON_TYPES or ctype.endswith("+json"):
        return False
    if ctype in _NDJSON_TYPES:
        return True
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype} is not application/json or application/x-ndjson",
                   close=True)


@routes.post("/v1/events")
async def post_events(request: web.Request) -> web.Response:
    """Store the body's events durably, in order, then answer 202 with their seqs."""
    app = request.app
    settings = app[SETTINGS].server
    received_at = time.time()
    if app[STATE].stopping:
        raise ApiError(503, "shutting_down", "the server is shutting down",
                       headers={hdrs.RETRY_AFTER: _RETRY_STOPPING}, close=True)
    ndjson = _body_kind(request)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in _ENCODINGS:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Encoding {encoding} is not supported (use gzip or deflate)",
                       close=True)
    limit = settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        if request.content.is_eof():
            # The whole body is in memory: take it as it is. request.read() would go
            # twice through the reader's coroutine and its flow control, and copy it.
            raw = request.content.read_nowait()
            if len(raw) > limit:  # a chunked body has no Content-Length to check first
                raise _too_large(limit)
        else:
            # aiohttp has no deadline of its own for a body that trickles in.
            async with asyncio.timeout(settings.read_timeout):
                raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout",
                       f"the body did not arrive within {settings.read_timeout:g} s",
                       close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except (HttpProcessingError, web.RequestPayloadError, ValueError, EOFError) as exc:
        raise ApiError(400, "invalid_json", f"the body could not be read: {exc}",
                       close=True) from None
    body = _inflate(raw, encoding, limit) if encoding not in _IDENTITY else raw
    source = _text_header(request, "X-Source")
    key = _text_header(request, "Idempotency-Key")
    events, array = _parse_events(body, ndjson, settings.max_depth)
    sequence = _sequence_header(request, len(events))
    queue = app[QUEUE]
    try:
        accepted = await queue.put(events, array=array, source=source, sequence=sequence,
                                   key=key, received_at=received_at)
    except QueueFullError as exc:
        raise ApiError(503, "queue_full", str(exc),
                       headers={hdrs.RETRY_AFTER: _RETRY_FULL}) from None
    except QueueClosedError:
        raise ApiError(503, "shutting_down", "the server is shutting down",
                       headers={hdrs.RETRY_AFTER: _RETRY_STOPPING}) from None
    except StorageFullError as exc:
        log.error("storage_full", error=str(exc))
        raise ApiError(507, "insufficient_storage", "the disk is full; nothing was stored",
                       headers={hdrs.RETRY_AFTER: "30"}) from None
    except StorageError as exc:
        log.error("storage_failed", error=str(exc))
        raise ApiError(503, "storage_unavailable", "storage failed; nothing was stored",
                       headers={hdrs.RETRY_AFTER: "5"}) from None
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    if not accepted.replayed:
        app[STATE].accepted_events += accepted.accepted
    return json_response(
        {"accepted": accepted.accepted, "first_seq": accepted.first_seq,
         "last_seq": accepted.last_seq},
        status=202, headers=headers,
    )


@routes.get("/v1/queue")
async def get_queue(request: web.Request) -> web.Response:
    """Queue depth and counters (in the PostgreSQL mode, also this node and whether it
    leads)."""
    postgres = request.app.get(POSTGRES)
    try:
        stats = await request.app[QUEUE].stats()
    except StorageError as exc:
        if postgres is None:
            raise
        raise ApiError(503, "storage_unavailable", str(exc),
                       headers={hdrs.RETRY_AFTER: "5"}) from None
    age = stats.oldest_pending_age_s
    body: dict[str, Any] = {
        "pending": stats.pending,
        "in_flight": stats.in_flight,
        "dead": stats.dead,
        "processed_total": stats.processed_total,
        "last_seq": stats.last_seq,
        "oldest_pending_age_s": None if age is None else round(age, 3),
        "warnings": request.app[STATE].all_warnings(),
    }
    if postgres is not None:
        body["node"] = postgres.node
        body["leader"] = postgres.leading
    return json_response(body)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """200 only when the queue is open, recovery is done and the worker runs (in the
    PostgreSQL mode: and the database answers; a follower is ready to take events)."""
    reason = not_ready_reason(request.app)
    postgres = request.app.get(POSTGRES)
    if reason is None and postgres is not None:
        reason = await postgres.unready_reason()
    if reason is not None:
        return json_response({"error": "not_ready", "detail": reason}, status=503)
    return json_response({"status": "ready"})


def not_ready_reason(app: web.Application) -> str | None:
    """Why the service is not ready, or None when it is."""
    state = app[STATE]
    if state.stopping:
        return "shutting down"
    if state.ready_reason:
        return state.ready_reason
    if not app[QUEUE].is_open:
        return "queue is closed"
    if not app[WORKER].running:
        return "worker is not running"
    return None
