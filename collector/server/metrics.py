"""Prometheus metrics: one registry per application, read from the service's own counters.

Counters and gauges are not incremented per event: a custom collector reads the
counters that the API, the queue and the worker keep anyway, when Prometheus scrapes.
Only latencies need a sample per call; they go into plain bucket arrays on the event
loop (no lock, no label lookup) through the queue's ``on_commit`` and the worker's
``on_handler`` observers.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from collector import __version__
from collector.queue import JobQueue, QueueStats
from collector.server.state import ServiceState
from collector.worker import Worker

#: Error codes of the contract, exported at 0 before the first one happens.
KNOWN_REJECTIONS: Final = (
    "invalid_json", "invalid_event", "invalid_header", "unauthorized", "too_large",
    "unsupported_media_type", "queue_full", "shutting_down", "insufficient_storage",
    "storage_unavailable",
)
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class StaleCounts(Protocol):
    """What the stats store counts (collector.stats.StatsCounters fits)."""

    stale_skipped: int


class LiveCounts(Protocol):
    """What the live feed counts (collector.server.live.LiveHub fits)."""

    @property
    def clients(self) -> int: ...

    published: int
    dropped: int


class Buckets:
    """A histogram filled on the event loop: a bisect and two additions per sample."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one sample."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of samples <= le) pairs, ending with +Inf, as Prometheus wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class ServiceMetrics(Collector):
    """Exposes the service's counters, queue numbers and latencies to Prometheus."""

    def __init__(
        self,
        state: ServiceState,
        queue: JobQueue,
        worker: Worker,
        *,
        stale: StaleCounts | None = None,
        live: LiveCounts | None = None,
    ) -> None:
        self._state = state
        self._queue = queue
        self._worker = worker
        self._stale = stale
        self._live = live
        self._snapshot: QueueStats | None = None
        self.commit_seconds = Buckets(LATENCY_BUCKETS)
        self.commit_events = Buckets(BATCH_BUCKETS)
        self.commit_requests = Buckets(BATCH_BUCKETS)
        self.handler_seconds: dict[str, Buckets] = {}
        self.handler_errors: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- observers (set on the queue and the worker) ---------------------------------------

    def observe_commit(self, requests: int, rows: int, seconds: float) -> None:
        """queue.on_commit: one group commit of `requests` requests holding `rows` events."""
        self.commit_seconds.observe(seconds)
        self.commit_events.observe(rows)
        self.commit_requests.observe(requests)

    def observe_handler(self, name: str, seconds: float, ok: bool) -> None:
        """worker.on_handler: one handler call."""
        buckets = self.handler_seconds.get(name)
        if buckets is None:
            buckets = self.handler_seconds[name] = Buckets(LATENCY_BUCKETS)
        buckets.observe(seconds)
        if not ok:
            self.handler_errors[name] = self.handler_errors.get(name, 0) + 1

    # -- scraping --------------------------------------------------------------------------

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape with this Accept header."""
        self._snapshot = await self._queue.stats()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        """Called by the registry at scrape time."""
        state, worker = self._state, self._worker
        counters = worker.counters
        yield _gauge("collector_build_info", "Version of the running collector.", 1,
                     labels={"version": __version__})

        yield _counter("collector_events_accepted", "Events accepted (answered 202) since start.",
                       state.accepted_events)
        rejected = CounterMetricFamily(
            "collector_requests_rejected", "Requests answered with an error, by error code.",
            labels=["reason"])
        for reason in sorted({*KNOWN_REJECTIONS, *state.rejected}):
            rejected.add_metric([reason], state.rejected.get(reason, 0))
        yield rejected

        yield _counter("collector_jobs_processed", "Jobs acknowledged by the worker since start.",
                       counters.processed)
        yield _counter("collector_jobs_retried", "Failed handler runs that were retried.",
                       counters.retried)
        yield _counter("collector_jobs_dead_lettered", "Jobs moved to the dead-letter store.",
                       counters.dead_lettered)
        if self._stale is not None:
            yield _counter("collector_events_skipped_stale",
                           "Events skipped by the stats handler as older than what it has.",
                           self._stale.stale_skipped)
        if self._live is not None:
            yield _gauge("collector_live_clients", "Clients connected to GET /v1/live.",
                         self._live.clients)
            yield _counter("collector_live_documents",
                           "Match documents the live feed sent out (each to every client).",
                           self._live.published)
            yield _counter("collector_live_clients_dropped",
                           "Live clients dropped: gone, or a write that did not finish in time.",
                           self._live.dropped)

        stats = self._snapshot
        if stats is not None:
            yield _gauge("collector_queue_pending_jobs",
                         "Jobs stored and not finished, the one in flight included.",
                         stats.pending + stats.in_flight)
            yield _gauge("collector_queue_dead_jobs", "Jobs in the dead-letter store.", stats.dead)
            yield _gauge("collector_queue_oldest_pending_age_seconds",
                         "Age of the oldest pending job (0 when none is pending).",
                         stats.oldest_pending_age_s or 0.0)
            yield _gauge("collector_queue_last_seq", "Highest seq ever committed.", stats.last_seq)
            yield _counter("collector_queue_processed",
                           "Jobs acknowledged over the queue file's whole life.",
                           stats.processed_total)

        yield _histogram("collector_queue_commit_duration_seconds",
                         "Time to write and commit one group of requests.", self.commit_seconds)
        yield _histogram("collector_queue_commit_batch_events", "Events per group commit.",
                         self.commit_events)
        yield _histogram("collector_queue_commit_batch_requests", "Requests per group commit.",
                         self.commit_requests)

        handler_hist = HistogramMetricFamily(
            "collector_handler_duration_seconds", "Time of one handler call, by handler.",
            labels=["handler"])
        handler_errors = CounterMetricFamily(
            "collector_handler_errors", "Handler calls that raised or timed out, by handler.",
            labels=["handler"])
        for name, buckets in sorted(self.handler_seconds.items()):
            handler_hist.add_metric([name], buckets.cumulative(), buckets.total)
            handler_errors.add_metric([name], self.handler_errors.get(name, 0))
        yield handler_hist
        yield handler_errors

        yield _gauge("collector_worker_running", "1 while the worker task is alive.",
                     1 if worker.running else 0)
        yield _gauge("collector_worker_busy_seconds",
                     "How long the current handler call has been running (0 when idle).",
                     worker.busy_for or 0.0)
        yield _gauge("collector_worker_since_progress_seconds",
                     "Seconds since the worker last finished a job (or started).",
                     max(0.0, time.monotonic() - counters.last_progress))


def _counter(name: str, doc: str, value: float, *, labels: dict[str, str] | None = None
             ) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _gauge(name: str, doc: str, value: float, *, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=buckets.cumulative(), sum_value=buckets.total)


@contextlib.asynccontextmanager
async def collecting(
    state: ServiceState,
    queue: JobQueue,
    worker: Worker,
    *,
    stale: StaleCounts | None = None,
    live: LiveCounts | None = None,
) -> AsyncIterator[ServiceMetrics]:
    """Metrics for one application: observers set on the queue and the worker meanwhile."""
    metrics = ServiceMetrics(state, queue, worker, stale=stale, live=live)
    queue.on_commit = metrics.observe_commit
    worker.on_handler = metrics.observe_handler
    try:
        yield metrics
    finally:
        queue.on_commit = None
        worker.on_handler = None
