"""PostgresQueue: the server's and the worker's queue (collector.queue.JobQueue) over the
shared log, so that `collector serve` runs unchanged on several nodes of one database.

* **Ingest (every node).** Concurrent `put` calls are group-committed like DurableQueue's:
  requests wait in an outbox, and one writer task appends everything in it as one
  `SharedLog.append` (one transaction, all or none), then what came in meanwhile as the
  next. A request is answered only after that commit returned. PostgreSQL unreachable,
  an error, or no answer within `timeout_s`: the request gets StorageError (the route's
  `503 storage_unavailable` with Retry-After), never a `202`.
* **The worker (the leader only).** Between `begin_term` and `end_term` (the server's
  election loop calls them), `next_job` hands out the log after the term's committed
  mark through a LogReader; acknowledgements are committed in groups every
  `ack_interval_ms`, and every settling write is fenced on the term's epoch. A
  FencedError means another node leads: `lost` is set and the election loop stops the
  worker. Outside a term, `next_job` waits.
* Dead letters, numbers and the line are read from the database on any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson
import structlog

from collector.errors import QueueClosedError, QueueFullError, StartupError, StorageError
from collector.jobs import Job
from collector.logs import detached_task
from collector.postgres import db
from collector.postgres.leader import Term
from collector.postgres.log import (
    FencedError,
    KeyConflictError,
    LogReader,
    Request,
    SharedLog,
)
from collector.postgres.schema import migrate
from collector.queue import Accepted, DeadJob, QueueStats
from collector.queue.rows import all_dead_seqs

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

_GROUP_MAX: Final = 2000  # requests per append at most
#: Event text per append at most (the first request goes whatever its size): the group's
#: texts go as one bytea, and a value of PostgreSQL holds at most 1 GB.
_GROUP_MAX_BYTES: Final = 64 * 1024 * 1024
_BACKLOG_FRESH_S: Final = 0.25  # the backlog figure for queue_full is reused this long
_SETTLE_RETRY_S: Final = 1.0  # acknowledgements wait this long after a failed commit
_POLL_S: Final = 0.005  # the leader looks for new jobs this often when idle

#: What means "PostgreSQL cannot be used right now": a 503, never a 500.
_DB_ERRORS: Final[tuple[type[BaseException], ...]] = (
    *db.CONNECTION_ERRORS, db.PostgresError, KeyConflictError)
_DB_OR_TIMEOUT: Final[tuple[type[BaseException], ...]] = (*_DB_ERRORS, TimeoutError)


@dataclass(slots=True)
class _Put:
    request: Request
    future: asyncio.Future[Accepted]
    size: int  # bytes of event text


@dataclass(slots=True)
class _Acks:
    """Acknowledgements of the current term not yet committed."""

    upto: int | None = None  # every regular job up to this seq is done
    revived: list[Job] = field(default_factory=list)
    processed: int = 0

    def __bool__(self) -> bool:
        return self.upto is not None or bool(self.revived) or self.processed > 0


class PostgresQueue:
    """One node's queue on the shared log (collector.queue.JobQueue)."""

    def __init__(self, dsn: str, node: str, *, max_pending: int = 1_000_000,
                 ack_interval_ms: int = 50, idempotency_ttl_hours: float = 48.0,
                 timeout_s: float = 5.0, pool_size: int = 8) -> None:
        self._dsn = dsn
        self.node = node
        self._max_pending = max_pending
        self._ack_interval = ack_interval_ms / 1000
        self._ttl_s = idempotency_ttl_hours * 3600
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._pool: db.Pool | None = None
        self._log: SharedLog | None = None
        self._open = False
        self._closing = False
        # Group commit.
        self._outbox: deque[_Put] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._queued_events = 0
        self._backlog = 0
        self._backlog_at = -_BACKLOG_FRESH_S
        self._backlog_lock = asyncio.Lock()
        # The worker's side, within a term.
        self._term: Term | None = None
        self._reader: LogReader | None = None
        self._window: deque[Job] = deque()
        self._revived_seqs: set[int] = set()
        self._flight: deque[Job] = deque()
        self._acks = _Acks()
        self._settle_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._term_changed = asyncio.Event()
        #: Set when a settling write was refused (FencedError): another node leads.
        self.lost = asyncio.Event()
        self.on_commit: Callable[[int, int, float], None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (a pool for this node) and create or migrate the schema."""
        try:
            async with asyncio.timeout(max(self._timeout_s, 10.0)):
                self._pool = await db.create_pool(self._dsn, min_size=1,
                                                  max_size=self._pool_size,
                                                  connect_timeout=self._timeout_s)
                async with self._pool.acquire() as conn:
                    await migrate(conn)
        except _DB_OR_TIMEOUT as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StartupError(f"[postgres] dsn: cannot use PostgreSQL: "
                               f"{type(exc).__name__}: {exc}") from None
        self._log = SharedLog(self._pool, idempotency_ttl_s=self._ttl_s)
        self._open = True
        log.info("queue_opened", backend="postgresql", node=self.node)

    async def close(self) -> None:
        """Answer what waits in the outbox, then close the pool."""
        if not self._open:
            return
        self._closing = True
        while self._writer is not None:
            await asyncio.wait({self._writer})
        await self.end_term()
        assert self._pool is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._pool.close()
        except _DB_OR_TIMEOUT:
            self._pool.terminate()
        self._open = False
        log.info("queue_closed", backend="postgresql", node=self.node)

    @property
    def shared_log(self) -> SharedLog:
        """The log (open() first)."""
        assert self._log is not None, "the queue is not open"
        return self._log

    @property
    def is_open(self) -> bool:
        """True between open() and close(), while puts are accepted."""
        return self._open and not self._closing

    @property
    def leading(self) -> bool:
        """Whether this node holds a term (runs the worker)."""
        return self._term is not None

    @property
    def term_epoch(self) -> int | None:
        """The fencing epoch of the term this node's worker runs in (None: it does not
        lead). Read by the statistics' fence, from the store's thread."""
        term = self._term
        return None if term is None else term.epoch

    async def _db(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run `call` within the timeout; a database failure is a StorageError."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call()
        except TimeoutError:
            raise StorageError(f"PostgreSQL did not answer within {self._timeout_s:g} s") from None
        except _DB_ERRORS as exc:
            raise StorageError(f"PostgreSQL: {type(exc).__name__}: {exc}") from None

    async def unready_reason(self) -> str | None:
        """Why this node cannot take events now (PostgreSQL unreachable), or None."""
        if not self.is_open:
            return "queue is closed"
        log_ = self.shared_log
        try:
            await self._db(log_.last_seq)
        except StorageError as exc:
            return str(exc)
        return None

    # -- producers -------------------------------------------------------------------------

    async def _current_backlog(self) -> int:
        """The backlog for queue_full, read again once it is _BACKLOG_FRESH_S old. One read
        at a time: the requests that arrive while it runs wait for its figure rather than
        each sending one of their own (at 32 connections, up to 32 reads at once, each a
        backend of the database busy under the load)."""
        if time.monotonic() - self._backlog_at < _BACKLOG_FRESH_S:
            return self._backlog
        async with self._backlog_lock:
            if time.monotonic() - self._backlog_at >= _BACKLOG_FRESH_S:
                self._backlog = await self._db(self.shared_log.backlog)
                self._backlog_at = time.monotonic()
        return self._backlog

    async def put(self, payloads: Sequence[Any], *, blobs: list[bytes] | None = None,
                  array: bytes | None = None, source: str | None = None,
                  sequence: int | None = None, key: str | None = None,
                  received_at: float | None = None) -> Accepted:
        """Store one request's events (all or none); return once committed.

        The events are stored as each one's JSON text (`blobs` as received, else
        serialised from `payloads`; `array` is not split)."""
        del array  # one row per event: the texts are needed one by one
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        if not payloads:
            raise ValueError("no events")
        n = len(payloads)
        if await self._current_backlog() + self._queued_events + n > self._max_pending:
            if key is not None:
                known = await self._db(lambda: self.shared_log.known_key(key))
                if known is not None:
                    return Accepted(known.accepted, known.first_seq, known.last_seq, True)
            raise QueueFullError(f"{self._backlog} jobs pending (max {self._max_pending})")
        events = blobs if blobs is not None else [orjson.dumps(p) for p in payloads]
        put = _Put(Request(events, time.time() if received_at is None else received_at,
                           source, sequence, key),
                   asyncio.get_running_loop().create_future(), sum(map(len, events)))
        self._outbox.append(put)
        self._queued_events += n
        if self._writer is None:
            self._writer = detached_task(self._write(), name="collector-pg-writer")
            self._writer.add_done_callback(self._writer_done)
        return await asyncio.shield(put.future)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._writer = None
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
            log.error("queue_writer_failed", error=repr(task.exception()))

    async def _write(self) -> None:
        """Append everything in the outbox as one group, then what came in meanwhile."""
        outbox = self._outbox
        while outbox:
            puts = [outbox.popleft()]
            size = puts[0].size
            while (outbox and len(puts) < _GROUP_MAX
                   and size + outbox[0].size <= _GROUP_MAX_BYTES):
                size += outbox[0].size
                puts.append(outbox.popleft())
            started = time.perf_counter()
            requests = [p.request for p in puts]
            try:
                answers: list[Accepted] | None = await self._db(
                    functools.partial(self.shared_log.append, requests))
            except StorageError as exc:
                log.error("queue_commit_failed", error=str(exc), requests=len(puts))
                for put in puts:
                    if not put.future.done():
                        put.future.set_exception(exc)
                answers = None
            finally:
                self._queued_events -= sum(len(p.request.events) for p in puts)
            if answers is None:
                continue
            if self.on_commit is not None:
                self.on_commit(len(puts), sum(a.accepted for a in answers if not a.replayed),
                               time.perf_counter() - started)
            for put, answer in zip(puts, answers, strict=True):
                if not put.future.done():
                    put.future.set_result(answer)

    # -- the leader's term -------------------------------------------------------------------

    def begin_term(self, term: Term) -> None:
        """This node leads: hand out the log after the term's committed mark."""
        self._term = term
        self._reader = LogReader(self.shared_log, after=term.applied_seq)
        self._window.clear()
        self._revived_seqs.clear()
        self._flight.clear()
        self._acks = _Acks()
        self.lost.clear()
        self._term_changed.set()

    def depose(self) -> None:
        """Hand out nothing more (the worker is being stopped); settling still tries."""
        self._reader = None
        self._window.clear()
        self._term_changed.set()

    async def end_term(self) -> None:
        """The worker has stopped: commit what is acknowledged (if still allowed), forget
        the term."""
        if self._term is None:
            return
        self.depose()
        # A flush running now ends first (the lock); a cancellation inside its commit
        # would leave its outcome unknown.
        with contextlib.suppress(StorageError, FencedError):
            await self._flush()
        self._term = None
        self._flight.clear()
        self._acks = _Acks()
        task, self._flush_task = self._flush_task, None
        if task is not None:  # asleep, or finding no term: it writes nothing now
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _epoch(self) -> int:
        if self._term is None:
            raise FencedError("this node does not lead")
        return self._term.epoch

    # -- the consumer ------------------------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """The head job if it is already read, else None."""
        if not self._window:
            return None
        job = self._window.popleft()
        self._flight.append(job)
        return job

    async def next_job(self) -> Job:
        """Wait for and return the head job (waits while this node does not lead)."""
        while True:
            job = self.take_nowait()
            if job is not None:
                return job
            reader = self._reader
            if reader is None:
                self._term_changed.clear()
                await self._term_changed.wait()
                continue
            try:
                jobs = await self._db(reader.take)
            except StorageError as exc:
                log.warning("worker_read_failed", error=str(exc), retry_in_s=_SETTLE_RETRY_S)
                await asyncio.sleep(_SETTLE_RETRY_S)
                continue
            if reader is not self._reader:
                continue  # the term ended meanwhile
            if not jobs:
                await asyncio.sleep(_POLL_S)
                continue
            self._revived_seqs.update(j.seq for j in jobs if reader.is_revived(j.seq))
            self._window.extend(jobs)

    def take_more(self, limit: int) -> list[Job]:
        """Up to `limit` first attempts of regular jobs right after those taken."""
        if not self._flight or self._flight[-1].seq in self._revived_seqs:
            return []
        window = self._window
        run: list[Job] = []
        while (window and len(run) < limit and window[0].attempt == 1
               and window[0].seq not in self._revived_seqs):
            run.append(window.popleft())
        self._flight.extend(run)
        return run

    def _finish(self, job: Job) -> None:
        flight = self._flight
        if flight and flight[0].seq == job.seq:
            flight.popleft()
        elif job in flight:  # pragma: no cover - jobs are finished in the order taken
            flight.remove(job)

    def ack(self, job: Job) -> None:
        """The job is done; committed with others within ack_interval_ms."""
        if self._term is None:
            return  # a term that ended: the next leader hands the job out again
        self._finish(job)
        acks = self._acks
        if job.seq in self._revived_seqs:
            acks.revived.append(job)
        else:
            acks.upto = job.seq if acks.upto is None else max(acks.upto, job.seq)
        acks.processed += 1
        if self._flush_task is None:
            self._flush_later_task(self._ack_interval)

    def _flush_later_task(self, delay: float) -> None:
        # Detached: the first ack comes from a job's handler, whose seq the flush's lines
        # must not carry.
        self._flush_task = detached_task(self._flush_later(delay), name="collector-pg-acks")

    async def _flush_later(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            await self._flush()
        except FencedError:
            pass  # lost is set
        except StorageError as exc:
            log.warning("ack_commit_failed", error=str(exc), retry_in_s=_SETTLE_RETRY_S)
            self._flush_later_task(_SETTLE_RETRY_S)
            return
        self._flush_task = None
        if self._acks and self._term is not None:  # came in while committing
            self._flush_later_task(self._ack_interval)

    async def _settle(self, call: Callable[[int], Awaitable[_T]]) -> _T:
        """A settling write fenced on the term's epoch; FencedError sets `lost`."""
        epoch = self._epoch()
        try:
            return await self._db(lambda: call(epoch))
        except FencedError:
            log.warning("leadership_fenced", node=self.node, epoch=epoch)
            self.lost.set()
            raise

    async def _flush(self) -> None:
        """Commit the acknowledgements so far (fenced)."""
        async with self._settle_lock:
            acks = self._acks
            if not acks or self._term is None:
                return
            self._acks = _Acks()
            try:
                await self._settle(lambda epoch: self.shared_log.ack(
                    epoch, upto=acks.upto, revived=[j.seq for j in acks.revived],
                    processed=acks.processed))
            except StorageError:
                self._acks = _merge(acks, self._acks)
                raise
        reader = self._reader
        for job in acks.revived:
            self._revived_seqs.discard(job.seq)
            if reader is not None:
                reader.settled(job)

    async def record_attempt(self, job: Job) -> None:
        """Persist that `job` failed `job.attempt` times (fenced)."""
        await self._flush()
        async with self._settle_lock:
            await self._settle(lambda epoch: self.shared_log.record_attempt(epoch, job))

    async def dead_letter(self, job: Job, error: str) -> None:
        """Move `job` to the dead letters (fenced); the line moves on."""
        await self._flush()
        async with self._settle_lock:
            await self._settle(lambda epoch: self.shared_log.bury(epoch, job, error))
        self._finish(job)
        if job.seq in self._revived_seqs:
            self._revived_seqs.discard(job.seq)
            if self._reader is not None:
                self._reader.settled(job)

    # -- dead letters and the line (any node) --------------------------------------------------

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadJob]:
        """Dead letters in seq order."""
        return await self._db(lambda: self.shared_log.dead_letters(limit=limit, offset=offset))

    async def dead_seqs(self) -> list[int]:
        """The seqs of every dead letter, in order."""
        return await all_dead_seqs(self.dead_letters)

    async def dead_letter_get(self, seq: int) -> DeadJob | None:
        """One dead letter by seq, or None."""
        return await self._db(lambda: self.shared_log.dead_letter(seq))

    async def retry_dead(self, seqs: Sequence[int], *, at_tail: bool = False) -> list[Job]:
        """Put dead letters back: in their old place (next up) or at the tail."""
        if not self.is_open:
            raise QueueClosedError("queue is closed")
        return await self._db(lambda: self.shared_log.retry_dead(seqs, at_tail=at_tail))

    async def drop_dead(self, seqs: Sequence[int]) -> int:
        """Delete dead letters for good; returns how many were there."""
        return await self._db(lambda: self.shared_log.drop_dead(seqs))

    async def peek(self, limit: int = 10) -> list[Job]:
        """The next jobs in line, without taking them."""
        jobs: list[Job] = []
        async for job in self.pending_jobs(page=limit):
            jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    async def pending_jobs(self, page: int = 1000) -> AsyncIterator[Job]:
        """Every job not yet done, in line order (revived dead letters first)."""
        log_ = self.shared_log
        after = 0
        while True:
            jobs = await self._db(functools.partial(log_.revived_jobs, page, after=after))
            for job in jobs:
                yield job
            if len(jobs) < page:
                break
            after = jobs[-1].seq
        after = (await self._db(log_.state)).applied_seq
        while True:
            jobs = await self._db(functools.partial(log_.jobs_after, after, page))
            for job in jobs:
                yield job
            if len(jobs) < page:
                return
            after = jobs[-1].seq

    async def purge_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys older than the retention; returns how many."""
        return await self._db(self.shared_log.purge_keys)

    # -- numbers ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs this node's worker has to do: the last backlog figure while it leads, 0 on
        a follower (whose worker waits by design; the log's own count is in stats())."""
        return self._backlog if self._term is not None else 0

    async def stats(self) -> QueueStats:
        """Numbers for /v1/queue, of the whole log (the same on every node)."""
        n = await self._db(self.shared_log.numbers)
        in_flight = len(self._flight)
        unsettled = self._acks.processed
        pending = max(0, n.stored - unsettled - in_flight)
        self._backlog = pending + in_flight
        return QueueStats(
            pending=pending,
            in_flight=in_flight,
            dead=n.dead,
            processed_total=n.processed_total + unsettled,
            last_seq=n.last_seq,
            # Rows acknowledged but not yet settled are still in the log: with nothing
            # pending or in flight there is no age, as in the SQLite mode.
            oldest_pending_age_s=(None if n.oldest_received_at is None
                                  or pending + in_flight == 0
                                  else max(0.0, time.time() - n.oldest_received_at)),
        )


def _merge(a: _Acks, b: _Acks) -> _Acks:
    uptos = [u for u in (a.upto, b.upto) if u is not None]
    return _Acks(max(uptos) if uptos else None, a.revived + b.revived,
                 a.processed + b.processed)
