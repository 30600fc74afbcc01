"""Through HTTP: concurrent requests come out of the worker exactly once, in seq order."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.recorder import FILE_ENV, Record, read_records
from tests.support.server import ClientFactory, wait_until

REQUESTS = 64


def build_request(rng: random.Random, r: int) -> tuple[list[dict[str, Any]], bytes, str]:
    """Events, body and Content-Type of request `r`: one object, an array or NDJSON."""
    kind = r % 3
    count = 1 if kind == 0 else rng.randint(2, 6)
    events = [{"id": f"r{r}-{k}", "Event": "UpdateState", "Data": {"r": r, "k": k}}
              for k in range(count)]
    if kind == 0:
        return events, orjson.dumps(events[0]), "application/json"
    if kind == 1:
        return events, orjson.dumps(events), "application/json"
    return events, b"\n".join(orjson.dumps(e) for e in events) + b"\n", "application/x-ndjson"


async def wait_for_records(path: Path, count: int, timeout: float = 30.0) -> list[Record]:
    """Poll the record file until it holds `count` lines (or fail after `timeout` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = read_records(path)
        if len(records) >= count:
            return records
        if loop.time() > deadline:
            raise AssertionError(f"{len(records)} of {count} jobs recorded in {timeout} s")
        await asyncio.sleep(0.01)


async def test_concurrent_posts_are_handled_once_each_in_seq_order(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_file = tmp_path / "record.log"
    monkeypatch.setenv(FILE_ENV, str(record_file))
    client = await make_client(worker__handlers=("tests.support.recorder:record",))
    rng = random.Random(2024)
    requests = [build_request(rng, r) for r in range(REQUESTS)]

    async def send(body: bytes, content_type: str) -> tuple[int, Any]:
        resp = await client.post("/v1/events", data=body,
                                 headers={"Content-Type": content_type})
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(send(body, ctype) for _, body, ctype in requests))
    total = sum(len(events) for events, _, _ in requests)
    records = await wait_for_records(record_file, total)
    queue: dict[str, Any] = {}

    async def acknowledged() -> bool:  # the last job is acknowledged just after its handler
        nonlocal queue
        queue = await (await client.get("/v1/queue")).json()
        return bool(queue["processed_total"] >= total)

    await wait_until(acknowledged, timeout=30, what=f"processed_total {total}")
    records = read_records(record_file)

    assert [status for status, _ in answers] == [202] * REQUESTS
    expected: dict[int, str] = {}
    for (events, _, _), (_, answer) in zip(requests, answers, strict=True):
        assert answer["accepted"] == len(events)
        assert answer["last_seq"] - answer["first_seq"] + 1 == len(events)
        for k, event in enumerate(events):
            assert answer["first_seq"] + k not in expected, "two events got the same seq"
            expected[answer["first_seq"] + k] = event["id"]
    assert sorted(expected) == list(range(1, total + 1))
    assert len(records) == total, "a job was handled more than once"
    assert [r.seq for r in records] == list(range(1, total + 1))
    assert [r.event_id for r in records] == [expected[seq] for seq in range(1, total + 1)]
    assert all(r.attempt == 1 for r in records)
    assert (queue["last_seq"], queue["processed_total"]) == (total, total)
