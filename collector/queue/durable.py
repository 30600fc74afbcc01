"""DurableQueue: group commit, the hand-off to the worker, batched acknowledgements."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import orjson
import structlog

from collector.errors import (
    QueueClosedError,
    QueueCorruptError,
    QueueFullError,
    StorageError,
)
from collector.jobs import Job
from collector.queue.check import SQLITE_DAMAGED
from collector.queue.rows import QUEUE_FILE, Accepted, DeadJob, Span, all_dead_seqs
from collector.queue.table import Acks, JobTable, Put, translate_error

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

_MEMORY_WINDOW: Final = 4096  # jobs handed to the worker from memory at most
_PAGE_ROWS: Final = 64  # rows read from disk per executor call at most
_GROUPS_PER_RUN: Final = 16  # group commits per writer run before other executor work
_ACKS_FORCE_FLUSH: Final = 10_000  # acknowledgements that trigger a commit of their own
_RETRY_AFTER_FAILURE_S: Final = 1.0  # acknowledgements wait this long after a failed commit


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters for /v1/queue."""

    pending: int
    in_flight: int
    dead: int
    processed_total: int
    last_seq: int
    oldest_pending_age_s: float | None

class DurableQueue:
    """Durable FIFO of jobs with group commit, batched acknowledgement and a memory window."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durability: Literal["full", "normal"] = "full",
        max_pending: int = 1_000_000,
        ack_interval_ms: int = 50,
        idempotency_ttl_hours: float = 48.0,
        max_bytes: int = 0,
    ) -> None:
        self._dir = data_dir
        self._max_bytes = max_bytes
        self._durability: Literal["full", "normal"] = durability
        self._max_pending = max_pending
        self._ack_interval = ack_interval_ms / 1000
        self._ttl_s = idempotency_ttl_hours * 3600
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-queue")
        self._table: JobTable | None = None
        self._open = False
        self._closing = False
        # Group commit: requests and acknowledgement batches wait in the outbox, in order,
        # for the writer (see _write_outbox). deque.append and popleft are atomic, so the
        # loop adds and the writer's thread takes without a lock.
        self._outbox: deque[Put | Acks] = deque()
        self._writer: asyncio.Future[None] | None = None  # the writer's run, while it runs
        self._queued_events = 0  # events in puts not yet settled (counted against the bound)
        self._ack_batches = 0  # acknowledgement batches in the outbox or being written
        # Sequence bookkeeping (all on the loop).
        self._next_seq = 1  # the seq after the last one known committed
        self._stored = 0  # jobs in the file not yet known done there
        self._dead = 0
        self._processed_flushed = 0
        self._done_upto = 0  # every regular job <= this is acknowledged or dead
        self._acks = 0  # acknowledgements not yet committed
        self._done_rows: list[int] = []  # keys of rows wholly done, not yet deleted
        self._acks_committing = 0  # acknowledgements inside a running transaction
        self._flush_timer: asyncio.TimerHandle | None = None
        # Hand-off to the worker: the window holds jobs of whole rows, `_spans` those rows
        # (oldest first, including rows whose jobs were already taken but are not done).
        self._window: deque[Job] = deque()
        self._spans: deque[Span] = deque()
        self._revived: deque[Job] = deque()  # dead letters put back in their old place
        self._revived_seqs: set[int] = set()
        self._cursor = 0  # highest seq handed to the window
        self._wakeup = asyncio.Event()
        self._flight: deque[Job] = deque()  # taken, not yet finished, in seq order
        #: Called after each successful group commit with (requests, rows, seconds); the
        #: metrics module sets it. Runs on the loop; must be cheap.
        self.on_commit: Callable[[int, int, float], None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the queue file; jobs left from a crash come first, in order."""
        loop = asyncio.get_running_loop()
        try:
            self._table = await loop.run_in_executor(
                self._executor,
                lambda: JobTable(self._dir, durability=self._durability,
                                  max_bytes=self._max_bytes),
            )
            state = await loop.run_in_executor(self._executor, self._table.state)
            await loop.run_in_executor(self._executor, self._table.mark_open)
        except BaseException as exc:
            if self._table is not None:
                await loop.run_in_executor(self._executor, self._table.close_connection)
                self._table = None
            self._executor.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                if getattr(exc, "sqlite_errorcode", None) in SQLITE_DAMAGED:
                    # "file is not a database", "malformed": the file is kept as it is.
                    raise QueueCorruptError(self.path, [str(exc)]) from None
                raise StorageError(f"cannot open {self.path}: {exc}") from None
            raise
        self._next_seq = state.last_seq + 1
        if state.head_first is None or state.head_done is None:
            self._done_upto = self._cursor = state.last_seq
        else:
            self._done_upto = state.head_done
            self._cursor = state.head_first - 1
        self._stored, self._dead = state.pending, state.dead
        self._processed_flushed = state.processed
        self._revived.extend(state.revived.jobs)
        self._revived_seqs.update(job.seq for job in state.revived.jobs)
        self._open = True
        if self._table.unclean_stop:
            # One line for the operator after a crash, kill -9 or power loss.
            log.info("unclean_stop_found", path=str(self.path), check="quick_check passed",
                     jobs_to_replay=state.pending, replay_from_seq=self._done_upto + 1
                     if state.pending else None)
        log.info("queue_opened", path=str(self.path), pending=state.pending, dead=state.dead,
                 last_seq=state.last_seq, durability=self._durability)

    async def close(self) -> None:
        """Commit what is waiting (requests and acknowledgements), then close the file."""
        if not self._open:
            return
        self._closing = True
        self._push_acks()
        # The writer writes what is waiting; a batch that fails now is given up (its
        # callers get the error; lost acknowledgements only replay jobs).
        while self._writer is not None or self._outbox:
            self._kick()
            if self._writer is not None:
                await asyncio.wait({self._writer})
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        table = self._table
        assert table is not None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(sqlite3.Error):
            await loop.run_in_executor(self._executor, table.checkpoint)
        await loop.run_in_executor(self._executor, table.close)
        self._executor.shutdown(wait=True)
        self._open = False
        log.info("queue_closed", pending=self.pending, processed_total=self.processed_total)

    @property
    def path(self) -> Path:
        """The queue's SQLite file."""
        return self._dir / QUEUE_FILE

    @property
    def is_open(self) -> bool:
        """True between open() and close(), while puts are accepted."""
        return self._open and not self._closing

    @property
    def processed_total(self) -> int:
        """Jobs acknowledged ever (dead letters not counted)."""
        return self._processed_flushed + self._acks + self._acks_committing

    def _take_acks(self) -> Acks:
        """Hand the uncommitted acknowledgements to a transaction about to run."""
        partial = None
        if self._spans and self._spans[0].first <= self._done_upto < self._spans[0].last:
            partial = (self._spans[0].last, self._done_upto)
        acks = Acks(rows=tuple(self._done_rows), partial=partial, count=self._acks)
        self._acks = 0
        self._done_rows = []
        self._acks_committing += acks.count
        return acks

    def _acks_settled(self, acks: Acks, *, committed: bool) -> None:
        self._acks_committing -= acks.count
        if committed:
            self._stored -= acks.count
            self._processed_flushed += acks.count
        elif not self._closing:  # the next commit retries them
            self._acks += acks.count
            self._done_rows.extend(acks.rows)

    # -- producers -------------------------------------------------------------------------

    async def put(
        self,
        payloads: Sequence[Any],
        *,
        blobs: list[bytes] | None = None,
        array: bytes | None = None,
        source: str | None = None,
        sequence: int | None = None,
        key: str | None = None,
        received_at: float | None = None,
    ) -> Accepted:
        """Store one request's events (all or none); return once they are on disk.

        `array` (the events as one JSON array text) or `blobs` (each event's JSON text)
        are the bytes as received, which must be valid JSON; they are stored as they are,
        without serialising `payloads` again.
        """
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        if not payloads:
            raise ValueError("no events")
        n = len(payloads)
        loop = asyncio.get_running_loop()
        if self.pending + self._queued_events + n > self._max_pending:
            if key is not None and self._table is not None:
                known = await loop.run_in_executor(
                    self._executor, self._table.lookup_key, key, self._ttl_s
                )
                if known is not None:
                    return known
            raise QueueFullError(f"{self.pending} jobs pending (max {self._max_pending})")
        put = Put(
            array=(array if array is not None
                   else b"[" + b",".join(blobs) + b"]" if blobs is not None
                   else orjson.dumps(list(payloads))),
            count=n,
            payloads=payloads,
            received_at=time.time() if received_at is None else received_at,
            source=source,
            sequence=sequence,
            key=key,
            future=loop.create_future(),
        )
        self._outbox.append(put)
        self._queued_events += n
        self._kick()
        return await put.future

    # -- the writer --------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start the writer if the outbox holds something and it is not running."""
        if self._writer is None and self._outbox:
            loop = asyncio.get_running_loop()
            self._writer = loop.run_in_executor(self._executor, self._write_outbox, loop)
            self._writer.add_done_callback(self._writer_done)

    def _writer_done(self, run: asyncio.Future[None]) -> None:
        self._writer = None
        if not run.cancelled() and run.exception() is not None:  # pragma: no cover - a bug
            log.error("queue_writer_failed", error=repr(run.exception()))
        self._kick()  # what came in after the writer found the outbox empty

    def _write_outbox(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the executor thread: commit everything in the outbox as one group, then
        whatever came in meanwhile as the next, until the outbox is empty.

        This is the group commit. The thread takes a group the moment it is ready for
        one, so it never idles while the loop gathers requests, and it keeps the GIL
        between groups instead of waiting for it again at each start. After
        _GROUPS_PER_RUN groups it returns so that other executor work (pages for the
        worker, dead letters) gets a turn; _writer_done starts it again. Results go back
        to the loop through call_soon_threadsafe, group after group, in order.
        """
        table = self._table
        assert table is not None
        outbox = self._outbox
        for _ in range(_GROUPS_PER_RUN):
            puts: list[Put] = []
            acks: list[Acks] = []
            while outbox:
                item = outbox.popleft()
                if isinstance(item, Put):
                    puts.append(item)
                else:
                    acks.append(item)
            if not puts and not acks:
                return
            started = time.perf_counter()
            try:
                results, spans = table.commit(puts, Acks.merge(acks) if acks else Acks(),
                                              self._ttl_s)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the callers
                loop.call_soon_threadsafe(self._write_failed, puts, acks, exc)
            else:
                loop.call_soon_threadsafe(self._written, puts, acks, results, spans,
                                          time.perf_counter() - started)

    def _written(self, puts: list[Put], acks: list[Acks], results: list[Accepted],
                 spans: list[Span], seconds: float) -> None:
        """A group is committed: account for it and answer its requests."""
        self._queued_events -= sum(p.count for p in puts)
        self._ack_batches -= len(acks)
        for batch in acks:
            self._acks_settled(batch, committed=True)
        self._committed(puts, results, spans)
        if self.on_commit is not None and puts:
            rows = sum(r.accepted for r in results if not r.replayed)
            self.on_commit(len(puts), rows, seconds)
        for put, result in zip(puts, results, strict=True):
            if not put.future.done():  # else the caller went away; the events are stored
                put.future.set_result(result)

    def _write_failed(self, puts: list[Put], acks: list[Acks], exc: Exception) -> None:
        """A group failed as a whole: its requests get the error, its acknowledgements
        are tried again later (or given up at close)."""
        self._queued_events -= sum(p.count for p in puts)
        self._ack_batches -= len(acks)
        err = translate_error(exc)
        log.error("queue_commit_failed", error=str(exc), requests=len(puts))
        for put in puts:
            if not put.future.done():
                put.future.set_exception(err)
        for batch in acks:
            self._acks_settled(batch, committed=False)
        if self._acks or self._done_rows:
            self._schedule_flush(_RETRY_AFTER_FAILURE_S)

    def _push_acks(self) -> None:
        """Hand the acknowledgements so far to the writer (they need no fsync of their own)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not (self._acks or self._done_rows):
            return
        self._outbox.append(self._take_acks())
        self._ack_batches += 1
        self._kick()

    async def _acks_written(self) -> None:
        """Wait until every acknowledgement batch handed to the writer is settled."""
        while self._ack_batches:
            self._kick()
            writer = self._writer
            assert writer is not None, "acknowledgements wait but the writer is not running"
            await asyncio.wait({writer})

    def _committed(self, puts: list[Put], results: list[Accepted], spans: list[Span]) -> None:
        """Account for newly stored jobs and hand them to the worker from memory if we can."""
        if not spans:
            return
        fresh = [(p, r) for p, r in zip(puts, results, strict=True) if not r.replayed]
        self._next_seq = spans[-1].last + 1
        self._stored += sum(r.accepted for _p, r in fresh)
        self._dead -= sum(1 for p, _r in fresh if p.revive is not None)
        # The window holds whole rows, contiguous right after what the worker has.
        if spans[0].first == self._cursor + 1 and len(self._window) < _MEMORY_WINDOW:
            window = self._window
            for put, result in fresh:
                seq = first = result.first_seq
                sequence = put.sequence
                for payload in put.payloads:
                    window.append(Job(seq, payload, put.received_at, 1, put.source,
                                      None if sequence is None else sequence + seq - first))
                    seq += 1
            self._spans.extend(spans)
            self._cursor = spans[-1].last
        self._wakeup.set()

    # -- the consumer ------------------------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """The head job if it is already in memory (the fast path), else None."""
        if self._revived:
            job = self._revived.popleft()
        elif self._window:
            job = self._window.popleft()
        else:
            return None
        self._flight.append(job)
        return job

    def take_more(self, limit: int) -> list[Job]:
        """Up to `limit` jobs right after those taken, if they already wait in memory
        (first attempts of regular jobs only, never a revived dead letter): a run for a
        handler that applies jobs in batches. They are in flight with the first."""
        if self._revived or not self._flight or self._flight[-1].seq in self._revived_seqs:
            return []
        window = self._window
        run: list[Job] = []
        while window and len(run) < limit and window[0].attempt == 1:
            run.append(window.popleft())
        self._flight.extend(run)
        return run

    @property
    def _in_flight(self) -> Job | None:
        """The oldest job taken and not finished."""
        return self._flight[0] if self._flight else None

    async def next_job(self) -> Job:
        """Wait for and return the job at the head of the line (strict seq order)."""
        loop = asyncio.get_running_loop()
        table = self._table
        assert table is not None
        while True:
            job = self.take_nowait()
            if job is not None:
                return job
            if self._cursor < self._next_seq - 1:
                page = await loop.run_in_executor(
                    self._executor, table.fetch, self._cursor, _PAGE_ROWS
                )
                for _seq, lost in page.set_aside:
                    self._stored -= lost
                    self._dead += 1
                if self._window:  # a commit was handed over meanwhile: it comes after
                    first = self._window[0].seq
                    self._window.extendleft(reversed([j for j in page.jobs if j.seq < first]))
                    self._spans.extendleft(reversed([s for s in page.spans if s.last < first]))
                else:
                    self._window.extend(page.jobs)
                    self._spans.extend(page.spans)
                    if page.spans:
                        self._cursor = max(self._cursor, page.spans[-1].last)
                if not page.spans and not self._window:
                    # Nothing on disk past the cursor: everything there was dead-lettered.
                    self._cursor = self._next_seq - 1
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def ack(self, job: Job) -> None:
        """The job is done; its row goes when all its jobs are done (committed in groups)."""
        self._finish(job)
        self._acks += 1
        if self._ack_interval == 0 or self._acks >= _ACKS_FORCE_FLUSH:
            self._push_acks()
        else:
            self._schedule_flush()

    def _row_key(self, job: Job) -> int:
        """The key of the row that holds `job`."""
        if job.seq in self._revived_seqs:
            return job.seq
        for span in self._spans:
            if span.first <= job.seq <= span.last:
                return span.last
        raise LookupError(f"job {job.seq} is not in a known row")  # pragma: no cover

    def _finish(self, job: Job) -> None:
        """`job` is done: rows wholly done move to the delete list."""
        flight = self._flight
        if flight and flight[0].seq == job.seq:
            flight.popleft()
        elif job in flight:  # pragma: no cover - jobs are finished in the order taken
            flight.remove(job)
        if job.seq in self._revived_seqs:
            self._revived_seqs.discard(job.seq)
            self._done_rows.append(job.seq)
            return
        self._done_upto = max(self._done_upto, job.seq)
        spans = self._spans
        while spans and spans[0].last <= self._done_upto:
            self._done_rows.append(spans.popleft().last)

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(
                self._ack_interval if delay is None else delay, self._flush_due
            )

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._push_acks()

    async def record_attempt(self, job: Job) -> None:
        """Persist that `job` failed `job.attempt` times, so max_attempts holds across restarts."""
        assert self._table is not None
        await self._acks_written()  # the row's progress must not overtake earlier acks
        acks = self._take_acks()
        await self._write_with_acks(acks, self._table.set_attempts, self._row_key(job),
                                    job.seq, job.attempt, acks)

    async def dead_letter(self, job: Job, error: str) -> None:
        """Move `job` to the durable dead-letter store; the line moves on."""
        assert self._table is not None
        await self._acks_written()
        key = self._row_key(job)
        acks = self._take_acks()
        await self._write_with_acks(acks, self._table.bury, job, key, error, acks)
        self._stored -= 1
        self._dead += 1
        self._finish(job)
        if self._done_rows and self._done_rows[-1] == key:
            self._done_rows.pop()  # bury already deleted that row

    async def _write_with_acks(self, acks: Acks, func: Callable[..., _T], *args: Any) -> _T:
        """Run a write that also commits `acks` in the queue's thread; settle the
        acknowledgements by what the write did.

        A cancellation (SIGTERM while the worker waits here) does not stop the write,
        which runs on in the thread and commits or fails by itself: the acknowledgements
        are settled when it ends, never put back for a second commit that would count
        them twice in processed_total.
        """
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(self._executor, func, *args)
        try:
            result = await asyncio.shield(write)
        except asyncio.CancelledError:
            write.add_done_callback(lambda done: self._acks_settled(
                acks, committed=not done.cancelled() and done.exception() is None))
            raise
        except BaseException:
            self._acks_settled(acks, committed=False)
            raise
        self._acks_settled(acks, committed=True)
        return result

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadJob]:
        """Dead-lettered jobs in seq order."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._table.dead, limit, offset)

    async def dead_seqs(self) -> list[int]:
        """The seqs of every dead letter, in order."""
        return await all_dead_seqs(self.dead_letters)

    async def dead_letter_get(self, seq: int) -> DeadJob | None:
        """One dead letter by seq, or None."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._table.dead_one, seq)

    async def retry_dead(self, seqs: Sequence[int], *, at_tail: bool = False) -> list[Job]:
        """Put dead letters back in line: in their old place (next up) or at the tail.

        In their old place they keep their seq and run before every pending job; at the
        tail they get new seqs after the newest job (through the group commit, so that
        seqs are handed out in one place). Returns the revived jobs.
        """
        assert self._table is not None
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        if at_tail:
            return await self._revive_at_tail(seqs)
        await self._acks_written()
        acks = self._take_acks()
        revived = await self._write_with_acks(acks, self._table.revive, seqs, acks)
        self._stored += len(revived)
        self._dead -= len(revived)
        self._revived.extend(revived)
        self._revived_seqs.update(job.seq for job in revived)
        self._wakeup.set()
        return revived

    async def _revive_at_tail(self, seqs: Sequence[int]) -> list[Job]:
        loop = asyncio.get_running_loop()
        puts: list[Put] = []
        for seq in sorted(set(seqs)):
            dead = await self.dead_letter_get(seq)
            if dead is None:
                continue
            puts.append(Put(
                array=b"[" + orjson.dumps(dead.payload) + b"]", count=1,
                payloads=[dead.payload],
                received_at=dead.received_at, source=dead.source, sequence=dead.sequence,
                key=None, future=loop.create_future(), revive=seq,
            ))
        self._outbox.extend(puts)
        self._queued_events += len(puts)
        self._kick()
        revived = []
        for put in puts:
            accepted = await put.future
            revived.append(Job(seq=accepted.first_seq, payload=put.payloads[0],
                               received_at=put.received_at, source=put.source,
                               sequence=put.sequence))
        return revived

    async def drop_dead(self, seqs: Sequence[int]) -> int:
        """Delete dead letters for good; returns how many were there."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        dropped = await loop.run_in_executor(self._executor, self._table.drop_dead, seqs)
        self._dead -= dropped
        return dropped

    async def peek(self, limit: int = 10) -> list[Job]:
        """The next jobs in line (the one in flight first), without taking them."""
        jobs: list[Job] = []
        async for job in self.pending_jobs():
            jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    async def pending_jobs(self, page: int = _PAGE_ROWS) -> AsyncIterator[Job]:
        """Every job not yet done, in line order (those in flight first), page by page."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        flight = list(self._flight)  # a run: every job of it, in the order taken
        for job in flight:
            yield job
        for job in list(self._revived):
            yield job
        regular = [job.seq for job in flight if job.seq not in self._revived_seqs]
        after_seq = max(regular) if regular else self._done_upto
        # Start with the row holding the first job after `after_seq`.
        after_key = after_seq
        for span in self._spans:
            if span.last > after_seq:
                after_key = span.first - 1
                break
        while True:
            rows = await loop.run_in_executor(self._executor, self._table.fetch, after_key,
                                              page)
            if not rows.spans:
                return
            for job in rows.jobs:
                if job.seq > after_seq:
                    yield job
            after_key = rows.spans[-1].last

    async def purge_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys older than the retention; returns how many."""
        assert self._table is not None
        loop = asyncio.get_running_loop()
        cutoff = time.time() - self._ttl_s
        return await loop.run_in_executor(self._executor, self._table.purge_keys, cutoff)

    # -- numbers ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs stored and not yet finished (the one in flight included)."""
        return self._stored - self._acks - self._acks_committing

    @property
    def last_seq(self) -> int:
        """The highest seq ever committed (0 when none)."""
        return self._next_seq - 1

    async def stats(self) -> QueueStats:
        """Numbers for /v1/queue."""
        oldest: float | None = None
        if self._in_flight is not None:
            oldest = self._in_flight.received_at
        elif self._revived:
            oldest = self._revived[0].received_at
        elif self._window:
            oldest = self._window[0].received_at
        elif self.pending and self._table is not None:
            loop = asyncio.get_running_loop()
            oldest = await loop.run_in_executor(
                self._executor, self._table.oldest_after, self._done_upto
            )
        in_flight = len(self._flight)
        return QueueStats(
            pending=self.pending - in_flight,
            in_flight=in_flight,
            dead=self._dead,
            processed_total=self.processed_total,
            last_seq=self.last_seq,
            oldest_pending_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        )
