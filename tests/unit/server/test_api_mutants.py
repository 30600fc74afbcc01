"""Tests written to kill the mutants of collector/api.py that survived the rest of the
suite (see docs/mutation-testing.md): auth, body kinds, decompression bounds, exact
integers, and the bytes that go to disk."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from collector.server.http import ApiError
from collector.server.ingest import _inflate
from tests.support.api import Recorder
from tests.support.server import ClientFactory, wait_until

pytestmark = pytest.mark.both_backends

Client = TestClient[Any, Any]

RECORD = ("tests.support.api:record",)
BLOCK = ("tests.support.api:block",)
TOKEN = "mutant-k1ller-t0ken"
LIMIT = 2048  # server.max_body_bytes of the bound tests


@pytest.fixture
async def client(make_client: ClientFactory, recorder: Recorder) -> Client:
    """The real app with the recording handler."""
    return await make_client(worker__handlers=RECORD)


async def post(client: Client, body: bytes, *, ctype: str | None = "application/json",
               headers: Mapping[str, str] | None = None) -> ClientResponse:
    """POST /v1/events with `body` as it is."""
    all_headers = dict(headers or {})
    if ctype is not None:
        all_headers["Content-Type"] = ctype
    # Without a Content-Type of ours, aiohttp's client would add application/octet-stream.
    skip = () if ctype is not None else ("Content-Type",)
    resp: ClientResponse = await client.post("/v1/events", data=body, headers=all_headers,
                                             skip_auto_headers=skip)
    return resp


async def answer(resp: ClientResponse) -> tuple[int, dict[str, Any]]:
    """Status and JSON body."""
    return resp.status, orjson.loads(await resp.read())


async def stored(client: Client, recorder: Recorder, count: int) -> list[Any]:
    """The payloads the handler saw, once it saw `count` of them."""
    await wait_until(lambda: len(recorder.jobs) >= count, timeout=10,
                     what=f"{count} jobs handled")
    return [job.payload for job in recorder.jobs]


# -- the token ----------------------------------------------------------------------------


async def test_a_refused_token_gets_the_bearer_challenge_and_a_closed_connection(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    client = await make_client(worker__handlers=RECORD, server__token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await post(client, b"{}", headers=headers)
        status, body = await answer(resp)
        assert status == 401
        assert body == {"error": "unauthorized", "detail": "missing or wrong bearer token"}
        assert resp.headers.get("WWW-Authenticate") == 'Bearer realm="collector"'
        assert resp.headers.get("Connection", "").lower() == "close"
    assert recorder.jobs == []


async def test_the_token_may_follow_the_scheme_after_several_spaces(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    client = await make_client(worker__handlers=RECORD, server__token=TOKEN)
    resp = await post(client, b'{"ok": 1}', headers={"Authorization": f"Bearer   {TOKEN}"})
    assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 1) == [{"ok": 1}]


# -- body kinds -----------------------------------------------------------------------------


async def test_an_array_without_content_type_is_json(client: Client,
                                                     recorder: Recorder) -> None:
    status, body = await answer(await post(client, b'[{"a": 1}, {"b": 2}]', ctype=None))
    assert status == 202
    assert body["accepted"] == 2
    assert await stored(client, recorder, 2) == [{"a": 1}, {"b": 2}]


async def test_a_json_suffix_media_type_is_json(client: Client, recorder: Recorder) -> None:
    resp = await post(client, b'{"v": 1}', ctype="application/vnd.collector.event+json")
    assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 1) == [{"v": 1}]


async def test_an_unsupported_media_type_closes_the_connection(client: Client) -> None:
    resp = await post(client, b'{"v": 1}', ctype="text/plain")
    status, body = await answer(resp)
    assert (status, body["error"]) == (415, "unsupported_media_type")
    assert resp.headers.get("Connection", "").lower() == "close"


# -- compressed bodies ----------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    """`data` as a raw deflate stream (no zlib header), which some clients send."""
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def stored_block(data: bytes, *, final: bool, pad_bits: int = 0) -> bytes:
    """One raw deflate "stored" block holding `data` (RFC 1951, 3.2.4)."""
    size = len(data)
    head = (1 if final else 0) | pad_bits << 3  # BTYPE 00; the rest of the byte is padding
    return bytes([head]) + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little") + data


async def test_a_raw_deflate_body_is_accepted(client: Client, recorder: Recorder) -> None:
    events = [{"raw": 1}, {"raw": 2}]
    resp = await post(client, raw_deflate(orjson.dumps(events)),
                      headers={"Content-Encoding": "deflate"})
    assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 2) == events


async def test_raw_deflate_is_told_from_zlib_by_both_header_checks(
    client: Client, recorder: Recorder
) -> None:
    """Raw streams whose first two bytes pass only one of the two zlib header checks:
    a multiple of 31 (but no deflate method nibble), and the method nibble 8 (but not a
    multiple of 31). Both are raw deflate, not zlib."""
    one = orjson.dumps({"pad": "x" * 13})
    assert len(one) == 23  # first bytes 0x01 0x17: 0x0117 = 279 = 9 * 31, nibble 1
    first = stored_block(one, final=True)
    assert (first[0] << 8 | first[1]) % 31 == 0
    assert first[0] & 0x0F != 8
    two = orjson.dumps({"pad": "y"})
    second = stored_block(two, final=False, pad_bits=1) + stored_block(b"", final=True)
    assert second[0] & 0x0F == 8
    assert (second[0] << 8 | second[1]) % 31 != 0
    for body in (first, second):
        assert zlib.decompress(body, -zlib.MAX_WBITS) in (one, two)
        resp = await post(client, body, headers={"Content-Encoding": "deflate"})
        assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 2) == [orjson.loads(one), orjson.loads(two)]


async def test_a_gzip_body_of_several_members_is_read_whole(client: Client,
                                                            recorder: Recorder) -> None:
    text = orjson.dumps([{"member": 1}, {"member": 2}])
    body = gzip.compress(text[:9]) + gzip.compress(text[9:20]) + gzip.compress(text[20:])
    resp = await post(client, body, headers={"Content-Encoding": "gzip"})
    assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 2) == [{"member": 1}, {"member": 2}]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(zlib.compress(b'{"d": 1}') + b"garbage", id="garbage"),
        pytest.param(zlib.compress(b'[{"d": 1}') + zlib.compress(b"]"), id="second-stream"),
    ],
)
async def test_bytes_after_a_deflate_stream_are_refused(client: Client, recorder: Recorder,
                                                        body: bytes) -> None:
    status, error = await answer(await post(client, body,
                                            headers={"Content-Encoding": "deflate"}))
    assert status == 400
    assert error == {"error": "invalid_json",
                     "detail": "trailing bytes after the deflate stream"}
    assert recorder.jobs == []


def padded(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    body = orjson.dumps({"p": "x" * (size - 8)})
    assert len(body) == size
    return body


async def test_a_body_that_inflates_to_exactly_the_limit_is_accepted_one_more_is_refused(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    client = await make_client(worker__handlers=RECORD, server__max_body_bytes=LIMIT)
    for encoding, pack in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        at_limit = await post(client, pack(padded(LIMIT)),
                              headers={"Content-Encoding": encoding})
        assert (await answer(at_limit))[0] == 202
        over = await post(client, pack(padded(LIMIT + 1)),
                          headers={"Content-Encoding": encoding})
        status, error = await answer(over)
        assert (status, error["error"]) == (413, "too_large")
    assert len(await stored(client, recorder, 2)) == 2


def test_a_gzip_bomb_is_refused_without_inflating_it_in_memory() -> None:
    """The output is bounded while decompressing, not checked afterwards."""
    bomb = gzip.compress(b"0" * (32 << 20), compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as refused:
            _inflate(bomb, "gzip", 1 << 20)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert peak < 8 << 20, f"{peak} bytes allocated to refuse a 1 MiB limit"


# -- events and their exact integers ----------------------------------------------------------


BIG = b"18446744073709551617"  # 2**64 + 1: orjson would round it to a float


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        pytest.param(b'{"ok": 1}\n{"big": ' + BIG + b"}\n", "application/x-ndjson",
                     id="ndjson-line"),
        pytest.param(b'[{"big": ' + BIG + b'}, {"ok": 1}]', "application/json",
                     id="array-first-event"),
        pytest.param(b'[{"ok": 1}, {"big": ' + BIG + b"}]", "application/json",
                     id="array-last-event"),
    ],
)
async def test_an_integer_beyond_64_bits_is_refused_in_every_body_kind(
    client: Client, recorder: Recorder, body: bytes, ctype: str
) -> None:
    status, error = await answer(await post(client, body, ctype=ctype))
    assert status == 400
    assert error == {"error": "invalid_json",
                     "detail": "integer 18446744073709551617... is outside the 64-bit range"}
    resp = await post(client, b'{"after": 1}')
    assert (await answer(resp))[0] == 202
    assert await stored(client, recorder, 1) == [{"after": 1}]


@pytest.mark.parametrize(
    ("body", "ctype", "detail"),
    [
        pytest.param(b'{"a": 1}\n[1]\n', "application/x-ndjson",
                     "line 2: an event must be a JSON object, not list", id="ndjson"),
        pytest.param(b'[{"a": 1}, 2]', "application/json",
                     "event 1: an event must be a JSON object, not int", id="array"),
        pytest.param(b"42", "application/json",
                     "the body: an event must be a JSON object, not int", id="single"),
        pytest.param(b"\n\n", "application/x-ndjson", "the body holds no event",
                     id="ndjson-empty"),
        pytest.param(b"[]", "application/json", "the array holds no event", id="array-empty"),
    ],
)
async def test_a_refused_event_is_named_in_the_detail(client: Client, body: bytes,
                                                      ctype: str, detail: str) -> None:
    status, error = await answer(await post(client, body, ctype=ctype))
    assert status == 400
    assert error == {"error": "invalid_event", "detail": detail}


async def test_invalid_json_detail_is_the_parser_message(client: Client) -> None:
    status, error = await answer(await post(client, b'{"a": 1'))
    assert (status, error["error"]) == (400, "invalid_json")
    assert "line 1 column" in error["detail"]


async def test_a_bad_x_sequence_is_explained(client: Client) -> None:
    status, error = await answer(await post(client, b"{}", headers={"X-Sequence": "x"}))
    assert status == 400
    assert error == {"error": "invalid_header",
                     "detail": "X-Sequence: a non-negative integer expected"}


async def test_every_body_kind_is_stored_as_events_that_read_back_from_disk(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    """The bytes written for each body kind decode to its events: the jobs behind the
    one in flight are read from the file, not from memory."""
    client = await make_client(worker__handlers=BLOCK, worker__handler_timeout=3600.0)
    try:
        bodies: list[tuple[bytes, str]] = [
            (b'{"head": 1}', "application/json"),
            (b'{"single": {"x": [1, 2]}}', "application/json"),
            (b'[{"array": 1}, {"array": 2}]', "application/json"),
            (b'{"nd": 1}\n\n{"nd": 2}\n', "application/x-ndjson"),
        ]
        for body, ctype in bodies:
            assert (await answer(await post(client, body, ctype=ctype)))[0] == 202
        await wait_until(lambda: len(recorder.jobs) == 1, timeout=10, what="the head job")
        resp = await client.get("/v1/queue/peek", params={"limit": "10"})
        assert resp.status == 200
        jobs = orjson.loads(await resp.read())["jobs"]
    finally:
        recorder.gate.set()
    assert [(j["seq"], j["payload"]) for j in jobs] == [
        (1, {"head": 1}), (2, {"single": {"x": [1, 2]}}), (3, {"array": 1}),
        (4, {"array": 2}), (5, {"nd": 1}), (6, {"nd": 2})]
