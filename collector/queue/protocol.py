"""What the worker and the HTTP routes need of a queue: DurableQueue (SQLite, one node)
and collector.postgres.PostgresQueue (several nodes on one database) both fit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from collector.jobs import Job
from collector.queue.durable import QueueStats
from collector.queue.rows import Accepted, DeadJob


class WorkQueue(Protocol):
    """The worker's side: take the head job (or a run), settle it."""

    def take_nowait(self) -> Job | None:
        """The head job if it is already at hand, else None."""

    async def next_job(self) -> Job:
        """Wait for and return the head job."""

    def take_more(self, limit: int) -> list[Job]:
        """Up to `limit` first attempts right after those taken, if at hand."""

    def ack(self, job: Job) -> None:
        """`job` is done (committed in groups)."""

    async def record_attempt(self, job: Job) -> None:
        """Persist that `job` failed `job.attempt` times; it keeps its place."""

    async def dead_letter(self, job: Job, error: str) -> None:
        """Move `job` to the dead letters; the line moves on."""


class JobQueue(WorkQueue, Protocol):
    """Everything the server uses: ingest, numbers, dead letters, the line."""

    #: Called after each group commit with (requests, rows, seconds) (metrics).
    on_commit: Callable[[int, int, float], None] | None

    @property
    def is_open(self) -> bool:
        """True while puts are accepted."""

    @property
    def pending(self) -> int:
        """Jobs this node's worker has still to do (a cheap, possibly cached figure)."""

    async def put(self, payloads: Sequence[Any], *, blobs: list[bytes] | None = None,
                  array: bytes | None = None, source: str | None = None,
                  sequence: int | None = None, key: str | None = None,
                  received_at: float | None = None) -> Accepted:
        """Store one request's events (all or none); return once committed."""

    async def stats(self) -> QueueStats:
        """Numbers for /v1/queue."""

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadJob]:
        """Dead letters in seq order."""

    async def dead_seqs(self) -> list[int]:
        """The seqs of every dead letter, in order."""

    async def dead_letter_get(self, seq: int) -> DeadJob | None:
        """One dead letter by seq, or None."""

    async def retry_dead(self, seqs: Sequence[int], *, at_tail: bool = False) -> list[Job]:
        """Put dead letters back in line (old place, or the tail); the jobs put back."""

    async def drop_dead(self, seqs: Sequence[int]) -> int:
        """Delete dead letters for good; how many there were."""

    async def peek(self, limit: int = 10) -> list[Job]:
        """The next jobs in line, without taking them."""

    def pending_jobs(self, page: int = ...) -> AsyncIterator[Job]:
        """Every job not yet done, in line order."""

    async def purge_idempotency_keys(self) -> int:
        """Forget expired Idempotency-Keys; how many."""
