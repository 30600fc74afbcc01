"""The row format: how jobs lie in the queue file, and the small records around it.

A row holds a contiguous run of jobs (seqs ``first_seq`` .. ``_id``), written by one
group commit, as a JSON array of request groups
``[received_at, source, first sequence, [event, ...]]``. Each request's events are
the bytes it sent, never serialised again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from collector.jobs import Job

QUEUE_FILE: Final = "queue.db"
JOBS_TABLE: Final = "jobs_v1"  # persist-queue names it {_TABLE_NAME}_{name}
JOB_COLUMNS: Final = "_id, first_seq, data, timestamp, done_upto, attempts, revived"
DEAD_COLUMNS: Final = "seq, data, timestamp, source, sequence, attempts, error, failed_at"
KEY_COLUMNS: Final = "key, first_seq, last_seq, accepted, created_at"


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a committed request gets back; replayed for a repeated Idempotency-Key."""

    accepted: int
    first_seq: int
    last_seq: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A job in the dead-letter store."""

    seq: int
    payload: Any
    received_at: float
    source: str | None
    sequence: int | None
    attempts: int
    error: str
    failed_at: float

#: Dead letters per read when all of them are wanted.
DEAD_PAGE: Final = 1000


async def all_dead_seqs(page: Callable[..., Awaitable[Sequence[DeadJob]]]) -> list[int]:
    """The seqs of every dead letter, in order, read a page at a time through a queue's
    ``dead_letters(limit=, offset=)``."""
    seqs: list[int] = []
    while True:
        found = await page(limit=DEAD_PAGE, offset=len(seqs))
        seqs.extend(d.seq for d in found)
        if len(found) < DEAD_PAGE:
            return seqs


@dataclass(frozen=True, slots=True)
class Span:
    """A stored row as the loop sees it: seqs first..last (the key is `last`)."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Page:
    """Jobs read from disk with the rows they came from."""

    jobs: list[Job]
    spans: list[Span]
    set_aside: list[tuple[int, int]] = field(default_factory=list)  # (dead seq, jobs lost)

def encode_group(received_at: float, source: str | None, sequence: int | None,
                  array: bytes) -> bytes:
    """One request's events in a row: [received_at, source, first sequence, [events]]."""
    seq = b"null" if sequence is None else str(sequence).encode()
    return (b"[" + repr(received_at).encode() + b"," + orjson.dumps(source) + b"," + seq
            + b"," + array + b"]")


def group_sizes(data: bytes) -> list[int]:
    """How many events each request group of a row holds (for checks)."""
    return [len(group[3]) for group in orjson.loads(data)]


def decode_row(row: tuple[Any, ...]) -> tuple[list[Job], Span]:
    """The jobs of one row (key, first_seq, data, timestamp, done_upto, attempts, revived)
    still to do, and its span."""
    last, first, data, _ts, done_upto, attempts, _revived = row
    jobs = []
    seq = first
    for received_at, source, sequence, events in orjson.loads(data):
        for index, payload in enumerate(events):
            if seq > done_upto:
                jobs.append(Job(seq, payload, received_at,
                                attempts + 1 if seq == done_upto + 1 else 1, source,
                                None if sequence is None else sequence + index))
            seq += 1
    if seq != last + 1:
        raise ValueError(f"row {last} holds {seq - first} events for seqs {first}..{last}")
    return jobs, Span(first, last)

def row_params(first: int, last: int, events: list[bytes], ts: float
         ) -> tuple[int, int, bytes, float, int]:
    """INSERT parameters of a row: key (last seq), first seq, data, timestamp, done_upto."""
    return (last, first, b"[" + b",".join(events) + b"]", ts, first - 1)


def dead_job(r: tuple[Any, ...]) -> DeadJob:
    return DeadJob(seq=r[0], payload=orjson.loads(r[1]), received_at=r[2], source=r[3],
                   sequence=r[4], attempts=r[5], error=r[6], failed_at=r[7])


def decode_page(rows: list[tuple[Any, ...]]) -> Page:
    """The jobs and spans of job rows (key, first_seq, data, timestamp, done_upto,
    attempts, revived), in the order given."""
    jobs: list[Job] = []
    spans: list[Span] = []
    for row in rows:
        row_jobs, span = decode_row(row)
        jobs += row_jobs
        spans.append(span)
    return Page(jobs, spans)


def dead_json(dead: DeadJob) -> dict[str, Any]:
    """A dead letter as the API lists and shows it (and the CLI prints it)."""
    return {"seq": dead.seq, "payload": dead.payload, "received_at": dead.received_at,
            "source": dead.source, "sequence": dead.sequence, "attempts": dead.attempts,
            "error": dead.error, "failed_at": dead.failed_at}
