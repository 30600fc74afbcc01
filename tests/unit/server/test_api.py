"""The HTTP API against the real application: real SQLite in tmp_path, real worker."""

from __future__ import annotations

import asyncio
import gzip
import io
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.support.api import Recorder
from tests.support.server import ClientFactory, wait_until

pytestmark = pytest.mark.both_backends

Client = TestClient[Any, Any]

RECORD = ("tests.support.api:record",)
BLOCK = ("tests.support.api:block",)
TOKEN = "t0ken-Sh0uld-N3ver-Leak"
#: The contract's fields, and `warnings` (an addition: on loopback it is always empty).
QUEUE_KEYS = {"pending", "in_flight", "dead", "processed_total", "last_seq",
              "oldest_pending_age_s", "warnings"}
EVENT: dict[str, Any] = {
    "Event": "GoalScored",
    "Data": {"MatchGuid": "", "GoalSpeed": 87.1, "Scorer": {"Name": "Zoë ⚽", "Shortcut": 3},
             "Assists": [1, None, True, "x"], "Neg": -5, "Big": 2**63 - 1},
}
MAX_BODY = 1_048_576  # server.max_body_bytes by default
WAIT_S = 30.0  # a hang guard for the polls, not a speed requirement


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
async def client(make_client: ClientFactory, recorder: Recorder) -> Client:
    """The real app with the recording handler."""
    return await make_client(worker__handlers=RECORD)


def auth(token: str = TOKEN) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


async def post(
    client: Client,
    body: bytes | str | Any,
    *,
    ctype: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
) -> ClientResponse:
    """POST /v1/events; a non-bytes, non-str body is sent as JSON. With `ctype` None the
    request has no Content-Type at all (aiohttp's own application/octet-stream is left out)."""
    if not isinstance(body, bytes | str):
        body = orjson.dumps(body)
    all_headers = dict(headers or {})
    if ctype is not None:
        all_headers["Content-Type"] = ctype
    # aiohttp's client warns (an error here) when a large body is given as raw bytes.
    data: Any = io.BytesIO(body) if isinstance(body, bytes) and len(body) > 65_536 else body
    resp: ClientResponse = await client.post(
        "/v1/events", data=data, headers=all_headers,
        skip_auto_headers=("Content-Type",) if ctype is None else None)
    return resp


async def json_of(resp: ClientResponse) -> Any:
    """The response body parsed as JSON (whatever its Content-Type claims)."""
    return orjson.loads(await resp.read())


async def accepted(resp: ClientResponse, count: int) -> tuple[int, int]:
    """Check a 202 answer for `count` events; return (first_seq, last_seq)."""
    body = await json_of(resp)
    assert resp.status == 202, body
    assert set(body) == {"accepted", "first_seq", "last_seq"}
    assert body["accepted"] == count
    assert isinstance(body["first_seq"], int)
    assert body["last_seq"] - body["first_seq"] == count - 1
    return body["first_seq"], body["last_seq"]


async def check_error(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Check the contract's error shape {"error": CODE, "detail": TEXT} and the status."""
    raw = await resp.read()
    assert resp.status == status, raw
    assert resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return dict(body)


async def queue_stats(client: Client, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """GET /v1/queue."""
    resp = await client.get("/v1/queue", headers=headers)
    assert resp.status == 200
    body = await json_of(resp)
    # The PostgreSQL mode adds which node answered and whether it runs the worker.
    extra = set(body) - QUEUE_KEYS
    assert set(body) >= QUEUE_KEYS
    assert extra in (set(), {"node", "leader"}), extra
    if extra:  # it leads within the election's first poll
        assert body["node"] == "test-node"
        assert isinstance(body["leader"], bool)
    assert body["warnings"] == []
    return dict(body)


async def last_seq(client: Client, headers: Mapping[str, str] | None = None) -> int:
    """The queue's last_seq."""
    value = (await queue_stats(client, headers))["last_seq"]
    assert isinstance(value, int)
    return value


async def wait_processed(client: Client, count: int,
                         headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Poll /v1/queue until processed_total reaches `count`, and check that it is exactly
    `count` (not more); a hang guard of WAIT_S fails the test loudly."""
    stats: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal stats
        stats = await queue_stats(client, headers)
        return bool(stats["processed_total"] >= count)

    await wait_until(reached, timeout=WAIT_S, what=f"processed_total {count}")
    assert stats["processed_total"] == count, stats
    return stats


async def wait_jobs(recorder: Recorder, count: int) -> None:
    """Poll until the recording handler saw `count` jobs, and check that it saw exactly
    `count` (not more); a hang guard of WAIT_S fails the test loudly."""
    await wait_until(lambda: len(recorder.jobs) >= count, timeout=WAIT_S,
                     what=f"the handler to see {count} jobs")
    assert len(recorder.jobs) == count, recorder.jobs


async def still_serving(client: Client, before: int,
                        headers: Mapping[str, str] | None = None) -> None:
    """Nothing was stored since `before`, and a valid POST on the same client gets 202."""
    assert await last_seq(client, headers) == before
    first, _ = await accepted(await post(client, {"after": "error"}, headers=headers), 1)
    assert first == before + 1  # the refused request took no seq
    assert await last_seq(client, headers) == first


# -- accepted bodies ----------------------------------------------------------------------


async def test_one_object_is_one_job_with_every_field(client: Client,
                                                      recorder: Recorder) -> None:
    before = time.time()
    first, last = await accepted(await post(client, EVENT), 1)
    after = time.time()
    assert first == last == 1  # the first event of a fresh queue
    await wait_jobs(recorder, 1)
    (job,) = recorder.jobs
    assert job.seq == first
    assert job.payload == EVENT
    assert isinstance(job.received_at, float)
    assert before <= job.received_at <= after  # the wall clock when it was accepted
    assert job.attempt == 1
    assert job.source is None
    assert job.sequence is None


async def test_array_is_one_job_per_object_in_order(client: Client, recorder: Recorder) -> None:
    events = [{"i": i, "Event": "Tick"} for i in range(7)]
    first, last = await accepted(
        await post(client, events, headers={"X-Source": "bridge-1", "X-Sequence": "41"}), 7)
    await wait_jobs(recorder, 7)
    assert [j.seq for j in recorder.jobs] == list(range(first, last + 1))
    assert [j.payload for j in recorder.jobs] == events
    assert [j.sequence for j in recorder.jobs] == list(range(41, 48))
    assert {j.source for j in recorder.jobs} == {"bridge-1"}
    assert {j.attempt for j in recorder.jobs} == {1}
    assert all(isinstance(j.received_at, float) for j in recorder.jobs)


async def test_ndjson_ignores_blank_lines(client: Client, recorder: Recorder) -> None:
    body = b'{"a": 1}\n\n{"b": [2, {"c": null}]}\r\n   \n{"d": "\xc3\xa9"}\n\n'
    first, last = await accepted(await post(client, body, ctype="application/x-ndjson"), 3)
    await wait_jobs(recorder, 3)
    assert [j.payload for j in recorder.jobs] == [{"a": 1}, {"b": [2, {"c": None}]}, {"d": "é"}]
    assert [j.seq for j in recorder.jobs] == [first, first + 1, last]


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_compressed_bodies(client: Client, recorder: Recorder, encoding: str,
                                 compress: Any) -> None:
    events = [EVENT, {"second": True}]
    await accepted(await post(client, compress(orjson.dumps(events)),
                              headers={"Content-Encoding": encoding}), 2)
    ndjson = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    await accepted(await post(client, compress(ndjson), ctype="application/x-ndjson",
                              headers={"Content-Encoding": encoding}), 2)
    await wait_jobs(recorder, 4)
    assert [j.payload for j in recorder.jobs] == events + events


async def test_json_with_charset_parameter_is_json(client: Client) -> None:
    await accepted(await post(client, EVENT, ctype="application/json; charset=utf-8"), 1)


async def test_seqs_strictly_increase_across_requests(client: Client,
                                                      recorder: Recorder) -> None:
    seen: list[int] = []
    for size in (1, 3, 1, 2, 5):
        body: Any = {"n": 0} if size == 1 else [{"n": k} for k in range(size)]
        first, last = await accepted(await post(client, body), size)
        seen.extend(range(first, last + 1))
    assert seen == list(range(1, 13))  # consecutive from a fresh queue's 1
    await wait_jobs(recorder, len(seen))
    assert [j.seq for j in recorder.jobs] == seen


async def test_concurrent_requests_get_disjoint_consecutive_seqs(client: Client,
                                                                 recorder: Recorder) -> None:
    bodies = [[{"req": r, "k": k} for k in range(r % 3 + 1)] for r in range(12)]
    answers = await asyncio.gather(*(post(client, b) for b in bodies))
    ranges = [await accepted(resp, len(b)) for resp, b in zip(answers, bodies, strict=True)]
    seqs = [s for first, last in ranges for s in range(first, last + 1)]
    assert sorted(seqs) == list(range(1, sum(len(b) for b in bodies) + 1))
    await wait_jobs(recorder, len(seqs))
    # The worker sees each request's events together, in order, at its seqs.
    by_seq = {j.seq: j.payload for j in recorder.jobs}
    for (first, _), b in zip(ranges, bodies, strict=True):
        assert [by_seq[first + k] for k in range(len(b))] == b
    assert [j.seq for j in recorder.jobs] == sorted(seqs)


async def test_x_sequence_at_the_sqlite_limit_is_kept(client: Client,
                                                      recorder: Recorder) -> None:
    await accepted(await post(client, EVENT, headers={"X-Sequence": str(2**63 - 1),
                                                      "X-Source": "edge"}), 1)
    await wait_jobs(recorder, 1)
    assert recorder.jobs[0].sequence == 2**63 - 1
    assert recorder.jobs[0].source == "edge"


async def test_big_integers_are_kept_exactly_or_refused(client: Client,
                                                        recorder: Recorder) -> None:
    """The payload is the JSON value as received: never silently turned into a float.
    An integer beyond 64 bits cannot be kept exactly, so the request is refused whole."""
    body = b'{"big": 18446744073709551617, "neg": -9223372036854775809}'
    before = await last_seq(client)
    error = await check_error(await post(client, body), 400, "invalid_json")
    assert error["detail"] == "integer 18446744073709551617... is outside the 64-bit range"
    await still_serving(client, before)
    # Within 64 bits (signed or unsigned) the integer is kept exactly, as an int.
    edge = b'{"big": 18446744073709551615, "neg": -9223372036854775808}'
    await accepted(await post(client, edge), 1)
    await wait_jobs(recorder, 2)
    assert [j.payload for j in recorder.jobs] == [
        {"after": "error"}, {"big": 18446744073709551615, "neg": -9223372036854775808}]
    payload = recorder.jobs[1].payload
    assert isinstance(payload["big"], int)
    assert isinstance(payload["neg"], int)


# -- refused bodies -----------------------------------------------------------------------


def nested_objects(depth: int) -> bytes:
    """An object holding objects `depth` levels deep in all ({"a": {"a": ... {}}})."""
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


GZIP_BOMB = gzip.compress(b'{"a": "' + b"0" * (4 * MAX_BODY) + b'"}', compresslevel=9)
GZIP_OK = gzip.compress(orjson.dumps(EVENT))

BAD_BODIES: list[Any] = [
    pytest.param(b'{"a": 1', None, {}, 400, "invalid_json", id="truncated-json"),
    pytest.param(b'{"a": tru}', None, {}, 400, "invalid_json", id="malformed-json"),
    pytest.param(b"", None, {}, 400, "invalid_json", id="empty-body"),
    pytest.param(b'{"a": "\xff\xfe"}', None, {}, 400, "invalid_json", id="invalid-utf8"),
    pytest.param(b'{"a": 1}{"b": 2}', None, {}, 400, "invalid_json", id="two-json-values"),
    pytest.param(b"42", None, {}, 400, "invalid_event", id="number"),
    pytest.param(b'"text"', None, {}, 400, "invalid_event", id="string"),
    pytest.param(b"null", None, {}, 400, "invalid_event", id="null"),
    pytest.param(b'[{"a": 1}, 2]', None, {}, 400, "invalid_event", id="array-with-number"),
    pytest.param(b'[{"a": 1}, [{"b": 2}]]', None, {}, 400, "invalid_event",
                 id="array-with-array"),
    pytest.param(b"[]", None, {}, 400, "invalid_event", id="empty-array"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, None, {}, 400,
                 "invalid_json", id="100k-nested-brackets"),
    pytest.param(b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, None, {}, 400,
                 "invalid_json", id="100k-nested-objects"),
    pytest.param(b'{"a": 1}\n{"b": \n', "application/x-ndjson", {}, 400, "invalid_json",
                 id="ndjson-bad-line"),
    pytest.param(b'{"a": 1}\n[1]\n', "application/x-ndjson", {}, 400, "invalid_event",
                 id="ndjson-non-object-line"),
    pytest.param(b"\n \n\n", "application/x-ndjson", {}, 400,
                 "invalid_event", id="ndjson-no-event"),
    pytest.param(b'{"a": "' + b"x" * MAX_BODY + b'"}', None, {}, 413, "too_large",
                 id="oversized"),
    pytest.param(GZIP_BOMB, None, {"Content-Encoding": "gzip"}, 413, "too_large",
                 id="gzip-bomb"),
    pytest.param(GZIP_OK[:-12] + b"garbage-garbage", None, {"Content-Encoding": "gzip"},
                 400, "invalid_json", id="corrupt-gzip"),
    pytest.param(b"this is not gzip at all", None, {"Content-Encoding": "gzip"},
                 400, "invalid_json", id="not-gzip"),
    pytest.param(b"not deflate", None, {"Content-Encoding": "deflate"},
                 400, "invalid_json", id="corrupt-deflate"),
    pytest.param(orjson.dumps(EVENT), "text/plain", {}, 415, "unsupported_media_type",
                 id="text-plain"),
    pytest.param(b'{"a": "' + b"x" * 500_000 + b'"}', "text/plain", {}, 415,
                 "unsupported_media_type", id="text-plain-large-body-left-unread"),
    pytest.param(b"a=1&b=2", "application/x-www-form-urlencoded", {}, 415,
                 "unsupported_media_type", id="form-urlencoded"),
    pytest.param(orjson.dumps(EVENT), "multipart/form-data; boundary=x", {}, 415,
                 "unsupported_media_type", id="multipart"),
    pytest.param(orjson.dumps(EVENT), None, {"Content-Encoding": "compress"}, 415,
                 "unsupported_media_type", id="encoding-compress"),
    pytest.param(orjson.dumps(EVENT), None, {"Content-Encoding": "x-made-up"}, 415,
                 "unsupported_media_type", id="encoding-made-up"),
    pytest.param(orjson.dumps(EVENT), None, {"Content-Encoding": "br"}, 415,
                 "unsupported_media_type", id="encoding-br"),
    pytest.param(orjson.dumps(EVENT), None, {"Content-Encoding": "zstd"}, 415,
                 "unsupported_media_type", id="encoding-zstd"),
    pytest.param(orjson.dumps(EVENT), None, {"X-Sequence": "abc"}, 400, "invalid_header",
                 id="x-sequence-text"),
    pytest.param(orjson.dumps(EVENT), None, {"X-Sequence": "-1"}, 400, "invalid_header",
                 id="x-sequence-negative"),
    pytest.param(orjson.dumps(EVENT), None, {"X-Sequence": "1.5"}, 400, "invalid_header",
                 id="x-sequence-float"),
    pytest.param(orjson.dumps(EVENT), None, {"X-Sequence": str(2**63)}, 400,
                 "invalid_header", id="x-sequence-2**63"),
    pytest.param(orjson.dumps(EVENT), None, {"X-Sequence": "99999999999999999999999"}, 400,
                 "invalid_header", id="x-sequence-huge"),
    pytest.param(orjson.dumps([EVENT, EVENT]), None, {"X-Sequence": str(2**63 - 1)}, 400,
                 "invalid_header", id="x-sequence-batch-overflows"),
]


@pytest.mark.parametrize(("body", "ctype", "headers", "status", "code"), BAD_BODIES)
async def test_refused_body_stores_nothing_and_server_goes_on(
    client: Client, recorder: Recorder, body: bytes, ctype: str | None,
    headers: dict[str, str], status: int, code: str,
) -> None:
    await accepted(await post(client, {"before": 1}), 1)
    before = await last_seq(client)
    resp = await post(client, body, ctype=ctype or "application/json", headers=headers)
    await check_error(resp, status, code)
    await still_serving(client, before)
    await wait_jobs(recorder, 2)
    assert [j.payload for j in recorder.jobs] == [{"before": 1}, {"after": "error"}]


async def test_chunked_body_over_the_limit_is_too_large(client: Client) -> None:
    """No Content-Length: the limit holds while the body is read."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": "'
        for _ in range(20):
            yield b"x" * 65_536
        yield b'"}'

    before = await last_seq(client)
    resp = await client.post("/v1/events", data=chunks(),
                             headers={"Content-Type": "application/json"})
    await check_error(resp, 413, "too_large")
    await still_serving(client, before)


async def test_chunked_body_over_the_limit_in_one_piece_is_too_large(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    """A chunked body that is in memory whole before the handler runs (one small write)
    is checked against the limit too: it is taken without request.read()'s own check."""
    client = await make_client(worker__handlers=RECORD, server__max_body_bytes=2048)
    body = orjson.dumps({"pad": "x" * 3000})
    request = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    before = await last_seq(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        answer = orjson.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert answer["error"] == "too_large"
    await still_serving(client, before)


async def test_missing_content_type_is_not_a_500(client: Client, recorder: Recorder) -> None:
    """A body without a Content-Type header is taken as JSON (api._body_kind)."""
    resp = await post(client, orjson.dumps(EVENT), ctype=None)
    assert await accepted(resp, 1) == (1, 1)
    await wait_jobs(recorder, 1)
    assert [j.payload for j in recorder.jobs] == [EVENT]


@pytest.mark.parametrize("max_depth", [1, 4, 32])
async def test_events_nested_deeper_than_max_depth(make_client: ClientFactory,
                                                   recorder: Recorder, max_depth: int) -> None:
    client = await make_client(worker__handlers=RECORD, server__max_depth=max_depth)
    # max_depth containers in all is within the limit however it is counted ...
    await accepted(await post(client, nested_objects(max_depth)), 1)
    before = await last_seq(client)
    too_deep = nested_objects(max_depth + 2)
    # ... max_depth + 2 is beyond it, alone, inside an array or on an NDJSON line.
    await check_error(await post(client, too_deep), 400, "invalid_event")
    await check_error(await post(client, b"[{}, " + too_deep + b"]"), 400, "invalid_event")
    await check_error(await post(client, b"{}\n" + too_deep + b"\n",
                                 ctype="application/x-ndjson"), 400, "invalid_event")
    deep_list = b'{"a": ' + b"[" * (max_depth + 1) + b"]" * (max_depth + 1) + b"}"
    await check_error(await post(client, deep_list), 400, "invalid_event")
    await still_serving(client, before)
    await wait_jobs(recorder, 2)
    assert [j.payload for j in recorder.jobs] == [orjson.loads(nested_objects(max_depth)),
                                                  {"after": "error"}]


async def test_not_found_and_method_not_allowed_are_json(client: Client) -> None:
    # The contract fixes the shape for every error; these codes are the code's own choice.
    await check_error(await client.get("/nope"), 404, "not_found")
    resp = await client.get("/v1/events")
    await check_error(resp, 405, "method_not_allowed")
    assert resp.headers.get("Allow") == "POST"
    # A path with a variable part: GET and DELETE exist (and HEAD with GET), PATCH does not.
    resp = await client.patch("/v1/dead/5")
    await check_error(resp, 405, "method_not_allowed")
    assert set(resp.headers.get("Allow", "").replace(" ", "").split(",")) == {
        "GET", "HEAD", "DELETE"}
    await check_error(await client.put("/v1/nope/deeper"), 404, "not_found")
    head = await client.head("/healthz")  # aiohttp adds HEAD to every GET route
    assert head.status == 200
    before = await last_seq(client)
    await still_serving(client, before)


# -- the token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(auth("wrong-token"), id="wrong"),
        pytest.param(auth(TOKEN[:-1]), id="prefix"),
        pytest.param(auth(TOKEN + "x"), id="longer"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-token"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic-scheme"),
        pytest.param({"Authorization": f"Token {TOKEN}"}, id="other-scheme"),
    ],
)
async def test_token_required(make_client: ClientFactory, recorder: Recorder,
                              headers: dict[str, str]) -> None:
    client = await make_client(worker__handlers=RECORD, server__token=TOKEN)
    before = await last_seq(client, auth())
    body = await check_error(await post(client, EVENT, headers=headers), 401, "unauthorized")
    assert TOKEN not in body["detail"]
    await still_serving(client, before, auth())
    await wait_jobs(recorder, 1)
    assert [j.payload for j in recorder.jobs] == [{"after": "error"}]


async def test_wrong_token_with_a_large_unread_body(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN)
    before = await last_seq(client, auth())
    big = [{"pad": "x" * 1000, "n": n} for n in range(400)]
    await check_error(await post(client, big, headers=auth("nope")), 401, "unauthorized")
    await still_serving(client, before, auth())


async def test_health_needs_no_token(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_the_token_guards_every_v1_path_even_unknown_ones(make_client: ClientFactory
                                                               ) -> None:
    """The token is checked before routing's own answers: without it, a /v1/ path that
    does not exist (or not for this method) is a 401 too, and tells nothing."""
    client = await make_client(server__token=TOKEN)
    await check_error(await client.get("/v1/nope"), 401, "unauthorized")
    await check_error(await client.get("/v1/events"), 401, "unauthorized")
    await check_error(await client.get("/v1/nope", headers=auth()), 404, "not_found")
    resp = await client.get("/v1/events", headers=auth())
    await check_error(resp, 405, "method_not_allowed")
    assert resp.headers.get("Allow") == "POST"
    await check_error(await client.get("/nope"), 404, "not_found")


async def test_token_from_file(make_client: ClientFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-42\n", encoding="utf-8")
    client = await make_client(server__token_file=token_file)
    before = await last_seq(client, auth("from-the-file-42"))
    await check_error(await post(client, EVENT), 401, "unauthorized")
    await check_error(await post(client, EVENT, headers=auth("from-the-file-4")), 401,
                      "unauthorized")
    await still_serving(client, before, auth("from-the-file-42"))


# -- Idempotency-Key ----------------------------------------------------------------------


async def test_idempotency_key_repeat_answers_the_same_and_stores_nothing(
    client: Client, recorder: Recorder,
) -> None:
    events = [{"k": 1}, {"k": 2}, {"k": 3}]
    key = {"Idempotency-Key": "batch-0001"}
    first_resp = await post(client, events, headers=key)
    first_body = await json_of(first_resp)
    await accepted(first_resp, 3)
    await wait_processed(client, 3)
    before = await last_seq(client)
    for _ in range(2):
        again = await post(client, events, headers=key)
        assert again.status == 202
        assert await json_of(again) == first_body
    assert await last_seq(client) == before
    # A marker after the repeats: once it is processed, the handler saw everything.
    await accepted(await post(client, {"marker": True}), 1)
    await wait_processed(client, 4)
    await wait_jobs(recorder, 4)
    assert [j.payload for j in recorder.jobs] == [*events, {"marker": True}]


async def test_idempotency_key_repeat_while_still_pending(make_client: ClientFactory,
                                                          recorder: Recorder) -> None:
    client = await make_client(worker__handlers=BLOCK, worker__handler_timeout=3600.0)
    try:
        key = {"Idempotency-Key": "pending-key"}
        first = await json_of(await post(client, {"k": 1}, headers=key))
        second = await post(client, {"k": 1}, headers=key)
        assert second.status == 202
        assert await json_of(second) == first
        assert await last_seq(client) == first["last_seq"]
    finally:
        recorder.gate.set()
    await wait_processed(client, 1)
    assert [j.payload for j in recorder.jobs] == [{"k": 1}]


async def test_different_idempotency_keys_store_separately(client: Client,
                                                           recorder: Recorder) -> None:
    a = await accepted(await post(client, EVENT, headers={"Idempotency-Key": "key-a"}), 1)
    b = await accepted(await post(client, EVENT, headers={"Idempotency-Key": "key-b"}), 1)
    c = await accepted(await post(client, EVENT), 1)
    assert [a, b, c] == [(1, 1), (2, 2), (3, 3)]  # three stores, none taken for another
    await wait_jobs(recorder, 3)
    assert [j.payload for j in recorder.jobs] == [EVENT, EVENT, EVENT]


async def test_idempotency_key_in_a_concurrent_burst_stores_once(client: Client,
                                                                 recorder: Recorder) -> None:
    events = [{"burst": 1}, {"burst": 2}]
    before = await last_seq(client)
    answers = await asyncio.gather(
        *(post(client, events, headers={"Idempotency-Key": "burst-key"}) for _ in range(10)),
        *(post(client, {"other": n}, headers={"Idempotency-Key": f"other-{n}"})
          for n in range(3)),
    )
    bodies = [await json_of(r) for r in answers[:10]]
    assert [r.status for r in answers] == [202] * 13
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["accepted"] == 2
    assert await last_seq(client) == before + 2 + 3
    await wait_processed(client, 5)
    await wait_jobs(recorder, 5)
    payloads = [j.payload for j in recorder.jobs]
    assert payloads.count({"burst": 1}) == 1
    assert payloads.count({"burst": 2}) == 1
    assert len(payloads) == 5


# -- the bound ----------------------------------------------------------------------------


async def test_queue_full_refuses_whole_requests(make_client: ClientFactory,
                                                 recorder: Recorder) -> None:
    client = await make_client(worker__handlers=BLOCK, worker__handler_timeout=3600.0,
                               queue__max_pending=3)
    try:
        before_post = time.time()
        await accepted(await post(client, {"n": 1}), 1)
        after_post = time.time()
        await wait_jobs(recorder, 1)  # the worker holds job 1
        _, last = await accepted(await post(client, [{"n": 2}, {"n": 3}]), 2)
        before_get = time.time()
        stats = await queue_stats(client)
        after_get = time.time()
        assert stats["in_flight"] == 1
        assert stats["pending"] == 2
        assert stats["processed_total"] == 0
        assert stats["last_seq"] == last == 3
        # The age of the oldest job not done (job 1, held), read from the wall clock:
        # between the readings around its POST and those around the GET (the figure is
        # rounded to the millisecond).
        age = stats["oldest_pending_age_s"]
        assert isinstance(age, float | int), stats
        assert before_get - after_post - 0.0005 <= age <= after_get - before_post + 0.0005, (
            before_post, after_post, before_get, after_get, stats)
        for body in ({"n": 4}, [{"n": 4}, {"n": 5}]):
            resp = await post(client, body)
            await check_error(resp, 503, "queue_full")
            assert resp.headers["Retry-After"] == "1"  # api._RETRY_FULL
        # a keyed request is refused as well while full, and is not remembered
        resp = await post(client, {"n": 6}, headers={"Idempotency-Key": "while-full"})
        await check_error(resp, 503, "queue_full")
        assert await last_seq(client) == last
    finally:
        recorder.gate.set()
    await wait_processed(client, 3)
    first, _ = await accepted(await post(client, {"n": 6},
                                         headers={"Idempotency-Key": "while-full"}), 1)
    assert first == last + 1  # the refused requests took no seq
    await wait_processed(client, 4)
    assert [j.payload for j in recorder.jobs] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 6}]


# -- status endpoints ---------------------------------------------------------------------


async def test_health_and_readiness(client: Client) -> None:
    resp = await client.get("/healthz")
    assert (resp.status, await json_of(resp)) == (200, {"status": "ok"})
    resp = await client.get("/readyz")
    assert (resp.status, await json_of(resp)) == (200, {"status": "ready"})


async def test_queue_status_after_processing(client: Client) -> None:
    stats = await queue_stats(client)
    assert stats["processed_total"] == 0
    assert stats["pending"] == 0
    assert stats["in_flight"] == 0
    assert stats["dead"] == 0
    await accepted(await post(client, EVENT), 1)
    _, last = await accepted(await post(client, [EVENT] * 4), 4)
    stats = await wait_processed(client, 5)
    assert stats["processed_total"] == 5
    assert stats["last_seq"] == last
    assert stats["pending"] == 0
    assert stats["in_flight"] == 0
    assert stats["dead"] == 0
    assert stats["oldest_pending_age_s"] is None  # nothing pending: no age
