"""The job a handler receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
