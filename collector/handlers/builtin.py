"""The small built-in handlers: `noop`, `log` and `stats`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog

from collector.handlers.base import HandlerContext
from collector.jobs import Handler, Job
from collector.stats.store import StatsStore

log = structlog.get_logger("collector.handler")


class Noop:
    """`noop`: do nothing, acknowledge every job (benchmarks, smoke tests). It takes runs
    of jobs too, as the stats handler does, so the worker hands it runs rather than one
    job at a time (a benchmark with it then measures what a real handler chain costs
    the worker, not the one-at-a-time path)."""

    async def __call__(self, job: Job) -> None:
        return None

    async def batch(self, jobs: Sequence[Job]) -> None:
        return None


noop = Noop()


async def log_job(job: Job) -> None:
    """Log each job as one structured line."""
    log.info("job", source=job.source, sequence=job.sequence, attempt=job.attempt,
             payload=job.payload)


class StatsHandler:
    """`stats`: one job in one transaction, or a run of jobs in one (`batch`)."""

    def __init__(self, store: StatsStore) -> None:
        self._store = store

    async def __call__(self, job: Job) -> None:
        await self._store.apply(job)

    async def batch(self, jobs: Sequence[Job]) -> None:
        """The whole run in one transaction with the last applied seq (one fsync); if
        any job fails nothing is kept and the error goes to the worker, which then
        applies the run one job at a time."""
        await self._store.apply_run(jobs)


@asynccontextmanager
async def stats_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`stats`: match statistics into stats.db (the store is the application's)."""
    yield StatsHandler(context.stats)
