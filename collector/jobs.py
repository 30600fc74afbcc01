"""The job a handler receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(slots=True)
class Job:
    """One accepted event, as handed to handlers in strict `seq` order.

    Handlers read it and must not change it. It is not frozen because a frozen
    dataclass costs four times as much to create, and one is created per event (tens
    of thousands a second); the payload, a dict, could be changed either way.
    Field order is part of the API: the queue creates jobs positionally.
    """

    seq: int
    payload: Any
    received_at: float
    attempt: int = 1
    source: str | None = None
    sequence: int | None = None


def job_json(job: Job) -> dict[str, Any]:
    """A job as the API exports and peeks it (and `collector import` reads it back)."""
    return {"seq": job.seq, "payload": job.payload, "received_at": job.received_at,
            "attempt": job.attempt, "source": job.source, "sequence": job.sequence}


Handler: TypeAlias = Callable[[Job], Awaitable[object]]
"""A handler: an async callable taking one job. Returning means done; raising, retry."""

BatchCall: TypeAlias = Callable[[Sequence[Job]], Awaitable[object]]
"""A handler's optional `batch(jobs)`: the same effect as calling the handler on each job
in order, all or nothing. The worker hands it runs of consecutive jobs that already wait
(up to `worker.batch_max`) when every handler of the chain has one; if it raises, the
run is handed to the single-job call one job at a time, so only the failing job is
retried or dead-lettered."""
