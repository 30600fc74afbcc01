"""The single worker: take the head job, run the handler chain, settle, repeat."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from collector.errors import PermanentError
from collector.jobs import BatchCall, Handler, Job
from collector.queue import WorkQueue
from collector.retry import backoff_delay

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class WorkerCounters:
    """What the worker did since start (exported as metrics, logged at shutdown)."""

    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_progress: float = dataclasses.field(default_factory=time.monotonic)


_TAKE_RETRY_S = 1.0  # wait after the queue failed to hand out a job
_YIELD_EVERY = 32  # jobs after which the worker lets the event loop run


class _HandlerTimeoutError(Exception):
    """A handler call outlived worker.handler_timeout."""


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop the worker
        text = "(message unavailable)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """Runs handlers on one job at a time, in strict seq order."""

    def __init__(
        self,
        queue: WorkQueue,
        handlers: Sequence[tuple[str, Handler]],
        *,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        handler_timeout: float = 60.0,
        batch_max: int = 512,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self._handlers = list(handlers)
        # Runs of jobs go to handlers that take them (an async `batch(jobs)`), when every
        # handler of the chain does; any other chain gets one job at a time.
        self._batch_calls: list[BatchCall] = [
            call for _, handler in self._handlers
            if callable(call := getattr(handler, "batch", None))
        ]
        self._batch_max = batch_max if len(self._batch_calls) == len(self._handlers) else 1
        self._max_attempts = max_attempts
        self._base = backoff_base
        self._cap = backoff_cap
        self._timeout = handler_timeout
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._busy_since: float | None = None  # monotonic start of the running handler call
        self._timed_out = False  # the watchdog cancelled a handler call that ran too long
        self._stopping = False
        self._applied = 0  # handlers that succeeded for the current job
        self.counters = WorkerCounters()
        #: Called after each handler call with (handler name, seconds, ok); the metrics
        #: module sets it. None costs nothing per job.
        self.on_handler: Callable[[str, float, bool], None] | None = None

    @property
    def running(self) -> bool:
        """True while the worker task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    @property
    def busy_for(self) -> float | None:
        """Seconds the current handler call has been running, None when idle."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def start(self) -> None:
        """Start the worker task (and the watchdog that enforces handler_timeout); also
        again after stop() (the PostgreSQL mode stops it when leadership is lost)."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="collector-worker")
        self._watchdog = asyncio.create_task(self._watch(), name="collector-worker-watchdog")

    async def _watch(self) -> None:
        """Cancel a handler call that outlives handler_timeout.

        One long-lived timer instead of a timeout scope per job: the per-job cost is two
        clock reads, which matters at tens of thousands of jobs per second.
        """
        tick = min(1.0, self._timeout / 4)
        while True:
            await asyncio.sleep(tick)
            busy = self.busy_for
            task = self._task
            if busy is not None and busy > self._timeout and not self._timed_out and task:
                self._timed_out = True
                task.cancel(msg="handler_timeout")

    async def stop(self, grace: float) -> None:
        """Let the current job finish within `grace` seconds, then stop."""
        task = self._task
        if task is None or task.done():
            await self._stop_watchdog()
            return
        self._stopping = True
        if self._busy_since is None:
            task.cancel()
        _done, running = await asyncio.wait({task}, timeout=grace)
        if running:
            log.warning("worker_stop_timeout", grace_s=grace)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._stop_watchdog()
        c = self.counters
        log.info("worker_stopped", processed=c.processed, retried=c.retried,
                 dead_lettered=c.dead_lettered)

    async def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _run(self) -> None:
        log.info("worker_started", handlers=[name for name, _ in self._handlers])
        queue = self._queue
        streak = 0
        while not self._stopping:
            streak += 1
            if streak >= _YIELD_EVERY:
                # Jobs in memory and handlers that never suspend would run back to back
                # without giving the event loop a turn: requests and health checks wait.
                streak = 0
                await asyncio.sleep(0)
            try:
                job = queue.take_nowait() or await queue.next_job()
            except Exception:
                log.exception("worker_take_failed", retry_in_s=_TAKE_RETRY_S)
                await asyncio.sleep(_TAKE_RETRY_S)
                continue
            run = [job]
            if self._batch_max > 1 and job.attempt == 1:
                run += queue.take_more(self._batch_max - 1)
            failed_at = 0
            if len(run) > 1:
                failed_at = await self._process_run(run)
                if failed_at == len(self._handlers):
                    continue
            # One job at a time: the usual path, and a run that failed as a whole, whose
            # jobs go one by one from the handler that failed (the ones before it took
            # the whole run), so that only the failing event is retried or dead-lettered.
            for index, one in enumerate(run):
                if index and self.stopping:
                    return  # the rest of the run keeps its place for the next start
                if not await self._process_settled(one, applied=failed_at):
                    return

    async def _process_settled(self, job: Job, *, applied: int) -> bool:
        """Process `job` until it is settled (done, or recorded as failed or dead); False
        when the worker stops first."""
        # This task's own context: binding replaces the previous job's seq.
        structlog.contextvars.bind_contextvars(seq=job.seq)
        # Handlers that succeeded for this job, each applied once: a settle that fails
        # and is tried again must not run them a second time.
        self._applied = applied
        while True:
            try:
                await self._process(job)
                return True
            except Exception:
                # Recording an attempt or a dead letter failed (disk full, say): the job
                # keeps its place and is tried again; the worker never dies of it.
                log.exception("worker_settle_failed", retry_in_s=_TAKE_RETRY_S)
                await asyncio.sleep(_TAKE_RETRY_S)
                if self.stopping:
                    return False

    async def _process_run(self, run: list[Job]) -> int:
        """Hand `run` to each handler's batch(); returns how many handlers took it (all of
        them: the run is done and acknowledged)."""
        self._busy_since = now = time.monotonic()
        observe = self.on_handler
        done = 0
        try:
            for (name, _handler), batch in zip(self._handlers, self._batch_calls, strict=True):
                started = time.perf_counter()
                try:
                    await batch(run)
                except asyncio.CancelledError:
                    if not self._timed_out:
                        raise  # a real cancellation (shutdown)
                    error = f"handler timed out after {self._timeout:g} s"
                except Exception as exc:  # noqa: BLE001 - the run is retried one by one
                    error = _describe(exc)
                else:
                    if observe is not None:
                        observe(name, time.perf_counter() - started, True)
                    done += 1
                    continue
                if observe is not None:
                    observe(name, time.perf_counter() - started, False)
                log.warning("batch_failed", handler=name, jobs=len(run),
                            first_seq=run[0].seq, last_seq=run[-1].seq, error=error,
                            then="one by one")
                return done
        finally:
            self._call_ended()
        queue = self._queue
        for job in run:
            queue.ack(job)
        counters = self.counters
        counters.processed += len(run)
        counters.last_progress = now
        return done

    async def _process(self, job: Job) -> None:
        while True:
            try:
                started = await self._call_handlers(job)
            except PermanentError as exc:
                await self._bury(job, _describe(exc), permanent=True)
                return
            except _HandlerTimeoutError:
                error = f"handler timed out after {self._timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - no handler error may stop the worker
                error = _describe(exc)
            else:
                self._queue.ack(job)
                counters = self.counters
                counters.processed += 1
                counters.last_progress = started
                return
            if job.attempt >= self._max_attempts:
                await self._bury(job, error, permanent=False)
                return
            delay = backoff_delay(job.attempt, base=self._base, cap=self._cap, rng=self._rng)
            log.warning("job_failed", attempt=job.attempt, max_attempts=self._max_attempts,
                        error=error, retry_in_s=round(delay, 3))
            self.counters.retried += 1
            await self._queue.record_attempt(job)
            if self._stopping:
                return  # the job keeps its place at the head for the next start
            await asyncio.sleep(delay)
            job = dataclasses.replace(job, attempt=job.attempt + 1)

    async def _call_handlers(self, job: Job) -> float:
        """Apply the handlers not yet applied to `job`, in order; returns the start time.

        Handlers run in list order and the first failure ends the call, so the ones that
        succeeded are always the first `self._applied`: a retry starts after them.
        """
        self._busy_since = now = time.monotonic()
        observe = self.on_handler
        handlers = self._handlers
        try:
            while self._applied < len(handlers):
                name, handler = handlers[self._applied]
                if observe is None:
                    await handler(job)
                else:
                    started = time.perf_counter()
                    try:
                        await handler(job)
                    except BaseException:
                        observe(name, time.perf_counter() - started, False)
                        raise
                    observe(name, time.perf_counter() - started, True)
                self._applied += 1
            return now
        except asyncio.CancelledError:
            if not self._timed_out:
                raise  # a real cancellation (shutdown)
            raise _HandlerTimeoutError from None
        finally:
            self._call_ended()

    def _call_ended(self) -> None:
        """A handler call (one job or a run) ended: not busy any more, and a timeout's
        cancellation is consumed (or came too late)."""
        self._busy_since = None
        if self._timed_out:
            self._timed_out = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    async def _bury(self, job: Job, error: str, *, permanent: bool) -> None:
        log.error("job_dead_lettered", attempt=job.attempt, error=error, permanent=permanent)
        await self._queue.dead_letter(job, error)
        self.counters.dead_lettered += 1
        self.counters.last_progress = time.monotonic()  # the line moved on
