"""The small built-in handlers: `noop`, `log` and `stats`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from collector.handlers.base import HandlerContext
from collector.jobs import Handler, Job

log = structlog.get_logger("collector.handler")


async def noop(job: Job) -> None:
    """Do nothing: acknowledges every job (benchmarks, smoke tests)."""


async def log_job(job: Job) -> None:
    """Log each job as one structured line."""
    log.info("job", source=job.source, sequence=job.sequence, attempt=job.attempt,
             payload=job.payload)


@asynccontextmanager
async def stats_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`stats`: match statistics into stats.db (the store is the application's)."""
    store = context.stats

    async def stats(job: Job) -> None:
        await store.apply(job)

    yield stats
