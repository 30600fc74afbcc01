"""GET /metrics: Prometheus text read from the service's own counters, one registry per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import RECORDER
from tests.support.paths import CAPTURE_JSONL
from tests.support.server import ClientFactory, wait_until

pytestmark = pytest.mark.both_backends

TOKEN = "metrics-test-token"
JSON = {"Content-Type": "application/json"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]




@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    """A closed gate for tests.support.api:block, opened at the end."""
    RECORDER.reset()
    yield
    RECORDER.gate.set()


async def scrape(client: TestClient[Any, Any]) -> tuple[Samples, set[str], str]:
    """(samples by (name, labels), family names with their HELP, content type)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    samples: Samples = {}
    helped: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.documentation:
            helped.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, helped, resp.headers["Content-Type"]


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """wait_until with this module's bound (it polled 500 times, 10 ms apart)."""
    await wait_until(check, timeout=5.0, what=check.__name__)


async def post(client: TestClient[Any, Any], body: Any, **headers: str) -> dict[str, Any]:
    """POST events; returns the JSON answer."""
    resp = await client.post("/v1/events", data=orjson.dumps(body), headers={**JSON, **headers})
    answer: dict[str, Any] = await resp.json()
    return answer


async def test_counts_accepted_rejected_processed_and_latencies(
    make_client: ClientFactory,
) -> None:
    client = await make_client(worker__handlers=("noop",))
    assert (await post(client, [{"n": i} for i in range(5)]))["accepted"] == 5
    assert (await post(client, {"n": 5}))["accepted"] == 1
    bad = await client.post("/v1/events", data=b"{nope", headers=JSON)
    assert bad.status == 400
    await bad.read()

    async def processed() -> bool:
        samples, _, _ = await scrape(client)
        return samples[("collector_jobs_processed_total", ())] == 6

    await eventually(processed)
    samples, helped, ctype = await scrape(client)
    assert ctype.startswith("text/plain")
    assert samples[("collector_events_accepted_total", ())] == 6
    assert samples[("collector_requests_rejected_total", (("reason", "invalid_json"),))] == 1
    assert samples[("collector_requests_rejected_total", (("reason", "queue_full"),))] == 0
    assert samples[("collector_jobs_retried_total", ())] == 0
    assert samples[("collector_jobs_dead_lettered_total", ())] == 0
    assert samples[("collector_queue_pending_jobs", ())] == 0
    assert samples[("collector_queue_oldest_pending_age_seconds", ())] == 0
    assert samples[("collector_queue_last_seq", ())] == 6
    # Two requests, each its own group commit (or one, if they met): 6 events in all.
    assert samples[("collector_queue_commit_batch_events_sum", ())] == 6
    assert 1 <= samples[("collector_queue_commit_duration_seconds_count", ())] <= 2
    assert samples[("collector_queue_commit_duration_seconds_bucket", (("le", "+Inf"),))] >= 1
    handler = (("handler", "noop"),)
    # One observation per handler call: noop takes runs, so a call is a run of the six
    # jobs or part of it (never more calls than jobs, at least one).
    assert 1 <= samples[("collector_handler_duration_seconds_count", handler)] <= 6
    assert samples[("collector_handler_errors_total", handler)] == 0
    assert samples[("collector_worker_running", ())] == 1
    assert samples[("process_cpu_seconds_total", ())] > 0  # the process collector is there
    assert any(name == "python_info" for name, _ in samples)  # the platform collector too
    for name in ("collector_events_accepted", "collector_queue_pending_jobs",
                 "collector_handler_duration_seconds"):
        assert name in helped


async def test_retried_and_dead_lettered(make_client: ClientFactory) -> None:
    client = await make_client(
        worker__handlers=("tests.support.handlers:always_fails",), worker__max_attempts=2,
        worker__backoff_base=0.01, worker__backoff_cap=0.01,
    )
    await post(client, {"n": 1})

    async def buried() -> bool:
        samples, _, _ = await scrape(client)
        return samples[("collector_jobs_dead_lettered_total", ())] == 1

    await eventually(buried)
    samples, _, _ = await scrape(client)
    assert samples[("collector_jobs_retried_total", ())] == 1
    assert samples[("collector_jobs_processed_total", ())] == 0
    assert samples[("collector_queue_dead_jobs", ())] == 1
    handler = (("handler", "tests.support.handlers:always_fails"),)
    assert samples[("collector_handler_errors_total", handler)] == 2
    assert samples[("collector_handler_duration_seconds_count", handler)] == 2


async def test_queue_depth_and_oldest_age_while_the_worker_is_held(
    make_client: ClientFactory,
) -> None:
    client = await make_client(worker__handlers=("tests.support.api:block",))
    await post(client, [{"n": 1}, {"n": 2}, {"n": 3}])

    async def held() -> bool:
        return len(RECORDER.jobs) == 1

    await eventually(held)
    samples, _, _ = await scrape(client)
    assert samples[("collector_queue_pending_jobs", ())] == 3
    assert samples[("collector_queue_oldest_pending_age_seconds", ())] > 0
    assert samples[("collector_worker_busy_seconds", ())] > 0
    RECORDER.gate.set()

    async def drained() -> bool:
        samples, _, _ = await scrape(client)
        return samples[("collector_queue_pending_jobs", ())] == 0

    await eventually(drained)


async def test_metrics_is_open_while_v1_needs_the_token(make_client: ClientFactory) -> None:
    client = await make_client(server__token=TOKEN)
    assert (await client.get("/v1/queue")).status == 401
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert "collector_requests_rejected_total" in text
    assert TOKEN not in text


async def test_each_app_has_its_own_registry(make_client: ClientFactory,
                                             make_settings: Callable[..., Any],
                                             tmp_path: Any) -> None:
    first = await make_client()
    second = await make_client(make_settings(server__data_dir=tmp_path / "other"))
    await post(first, [{"n": 1}, {"n": 2}])
    one, _, _ = await scrape(first)
    two, _, _ = await scrape(second)
    assert one[("collector_events_accepted_total", ())] == 2
    assert two[("collector_events_accepted_total", ())] == 0


async def test_openmetrics_when_asked(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_stale_skips_are_counted(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    update = orjson.loads(CAPTURE_JSONL.read_text().splitlines()[0])
    await post(client, update, **{"X-Source": "pc", "X-Sequence": "10"})
    await post(client, update, **{"X-Source": "pc", "X-Sequence": "4"})  # older: stale

    async def both_done() -> bool:
        samples, _, _ = await scrape(client)
        return samples[("collector_jobs_processed_total", ())] == 2

    await eventually(both_done)
    samples, _, _ = await scrape(client)
    assert samples[("collector_events_skipped_stale_total", ())] == 1
