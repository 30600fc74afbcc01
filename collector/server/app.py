"""The application factory: settings in, a wired aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from collector.config import Settings, mask_dsn
from collector.files import forget_daemon, locked_data_dir
from collector.handlers import HandlerContext, resolve
from collector.queue import DurableQueue
from collector.server import (
    admin,
    http,
    ingest,
    live_routes,
    metrics,
    pages,
    stats_routes,
    systemd,
)
from collector.server.appkeys import (
    LIVE,
    METRICS,
    NOTIFIER,
    POSTGRES,
    QUEUE,
    SETTINGS,
    STATE,
    STATS,
    WORKER,
)
from collector.server.guard import Guard
from collector.server.live import LiveHub
from collector.server.state import ServiceState
from collector.stats.backend import StatsUnavailableError
from collector.stats.store import StatsStore
from collector.worker import Worker

if TYPE_CHECKING:  # the PostgreSQL mode is optional (asyncpg: pip install '.[postgres]');
    # its modules are imported by the contexts that need them, only when a DSN is set.
    from collector.postgres import Candidate, PostgresQueue

log = structlog.get_logger(__name__)

_PURGE_EVERY_S = 3600.0
_HEARTBEAT_S = 1.0  # the leader checks its lock and epoch this often (PostgreSQL mode)
_IDLE_CHECK_MAX_S = 60.0  # idle matches are looked for at least this often


def create_app(settings: Settings) -> web.Application:
    """Build the application; resources are opened and closed by its cleanup contexts."""
    factories = [(spec, resolve(spec)) for spec in settings.worker.handlers]
    dsn = settings.postgres_dsn()  # None: the embedded SQLite queue
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        # Request bodies are decompressed by the API itself, with a cap (gzip bombs) and
        # a JSON 415 for encodings it does not take.
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    guard = Guard.from_settings(settings.server)
    app[STATE] = ServiceState(token=settings.token_value(), guard=guard)
    if guard.any_host:
        app[STATE].config_warnings.append(
            'server.allowed_hosts is ["*"]: any Host is answered, so a web page can reach '
            "this server through a visitor's browser (DNS rebinding)")
        log.warning("host_check_off", detail=app[STATE].config_warnings[-1])
    if guard.cors:  # a signal costs every answer a call; only when there is CORS to add
        app.on_response_prepare.append(guard.on_response_prepare)
    # Every route is wrapped by http.endpoint (request_id, token, JSON errors), and a
    # last route answers 404/405 in the same shape.
    http.add_routes(app, ingest.routes, stats_routes.routes, live_routes.routes, admin.routes,
                    pages.routes)

    async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
        q = settings.queue
        with locked_data_dir(settings.server.data_dir) as data_dir:
            forget_daemon(data_dir)  # a record left by a daemon killed with -9
            queue = DurableQueue(
                data_dir, durability=q.durability, max_pending=q.max_pending,
                ack_interval_ms=q.ack_interval_ms, idempotency_ttl_hours=q.idempotency_ttl_hours,
                max_bytes=q.max_bytes,
            )
            await queue.open()
            app[QUEUE] = queue
            try:
                yield
            finally:
                await queue.close()

    async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
        # The data dir still holds the lock and the local files (the archive).
        from collector.postgres import PostgresQueue  # optional: asyncpg
        q, p = settings.queue, settings.postgres
        assert dsn is not None
        with locked_data_dir(settings.server.data_dir) as data_dir:
            forget_daemon(data_dir)
            queue = PostgresQueue(
                dsn, p.node or f"{socket.gethostname()}:{settings.server.port}",
                max_pending=q.max_pending, ack_interval_ms=q.ack_interval_ms,
                idempotency_ttl_hours=q.idempotency_ttl_hours)
            await queue.open()
            app[QUEUE] = queue
            app[POSTGRES] = queue
            try:
                yield
            finally:
                await queue.close()

    async def stats_ctx(app: web.Application) -> AsyncIterator[None]:
        # Opened inside the data dir's lock (queue_ctx), before the worker, closed after it.
        # In the PostgreSQL mode the statistics are in the shared database, fenced on the
        # epoch of this node's term (only the leader writes).
        shared = None
        postgres = app.get(POSTGRES)
        if postgres is not None:
            assert dsn is not None
            from collector.postgres.stats import PostgresStats  # optional: asyncpg
            shared = PostgresStats(dsn, mask_dsn(dsn), epoch=lambda: postgres.term_epoch)
        store = StatsStore(settings.server.data_dir, durability=settings.queue.durability,
                           shared=shared)
        await store.open()
        app[STATS] = store
        try:
            yield
        finally:
            await store.close()

    async def live_ctx(app: web.Application) -> AsyncIterator[None]:
        # Listens to the store before the worker applies anything; its streams are closed
        # at on_shutdown (below), before aiohttp waits for open requests.
        store = app[STATS]
        hub = LiveHub(store)
        await hub.start()
        app[LIVE] = hub
        store.on_applied = hub.changed
        if dsn is None:
            try:
                yield
            finally:
                store.on_applied = None
                await hub.stop()
            return
        # PostgreSQL: every node follows what the leader applied through its
        # notifications (None: some may have been missed, read again); the leader's own
        # store also tells its hub at once, as in the SQLite mode (a match marked twice
        # is read once more, and sent only if it changed).
        from collector.postgres.stats import StatsListener  # optional: asyncpg
        listener = StatsListener(
            dsn, lambda ids: hub.resync() if ids is None else hub.changed(ids))
        await listener.start()
        try:
            yield
        finally:
            store.on_applied = None
            await listener.stop()
            await hub.stop()

    async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
        context = HandlerContext(settings=settings, stats=app[STATS])
        async with contextlib.AsyncExitStack() as stack:
            handlers = [
                (spec, await stack.enter_async_context(factory(context)))
                for spec, factory in factories
            ]
            w = settings.worker
            worker = Worker(
                app[QUEUE], handlers, max_attempts=w.max_attempts, backoff_base=w.backoff_base,
                backoff_cap=w.backoff_cap, handler_timeout=w.handler_timeout,
                batch_max=w.batch_max,
            )
            app[WORKER] = worker
            worker.start()
            postgres = app.get(POSTGRES)
            if postgres is None:
                app[STATE].ready_reason = ""
                try:
                    yield
                finally:
                    app[STATE].stopping = True
                    await worker.stop(settings.server.shutdown_timeout)
                return
            # Every node campaigns; the worker gets jobs only while this node leads.
            assert dsn is not None
            from collector.postgres import Candidate  # optional: asyncpg
            candidate = Candidate(dsn, postgres.node)
            leading = asyncio.create_task(
                _lead(postgres, candidate, worker, settings.server.shutdown_timeout),
                name="collector-leader")
            app[STATE].ready_reason = ""
            try:
                yield
            finally:
                app[STATE].stopping = True
                leading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leading
                postgres.depose()
                await worker.stop(settings.server.shutdown_timeout)
                await postgres.end_term()
                await candidate.close()

    async def maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_maintain(app), name="collector-maintenance")
        idle = asyncio.create_task(_close_idle(app), name="collector-idle-close")
        yield
        for one in (task, idle):
            one.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await one

    async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
        store = app.get(STATS)
        async with metrics.collecting(app[STATE], app[QUEUE], app[WORKER],
                                      stale=store.counters if store else None,
                                      live=app.get(LIVE)) as service:
            app[METRICS] = service
            yield

    async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
        # READY=1 and STOPPING=1 come from server.serve, which knows when the port listens.
        w = settings.worker
        async with systemd.service_notifier(app[QUEUE], app[WORKER],
                                            handler_timeout=w.handler_timeout,
                                            backoff_cap=w.backoff_cap) as notifier:
            app[NOTIFIER] = notifier
            yield

    async def on_shutdown(app: web.Application) -> None:
        app[STATE].stopping = True
        # An open event stream would otherwise hold the stop for shutdown_timeout.
        hub = app.get(LIVE)
        if hub is not None:
            hub.close_streams()

    app.cleanup_ctx.append(pages.dashboard_ctx)
    if not settings.server.allowed_hosts:
        app.cleanup_ctx.append(_fqdn_ctx)
    app.cleanup_ctx.extend([queue_ctx if dsn is None else postgres_ctx, stats_ctx, live_ctx,
                            worker_ctx, maintenance_ctx])
    # They watch the worker, so they start after it and stop before it drains.
    app.cleanup_ctx.extend([metrics_ctx, notify_ctx])
    app.on_shutdown.append(on_shutdown)
    return app


async def _lead(queue: PostgresQueue, candidate: Candidate, worker: Worker,
                grace: float) -> None:
    """Campaign for ever; while this node leads, its worker applies the log from the
    term's committed mark. On a lost lock or a fenced write, stop the worker (the job at
    hand finishes within `grace`; its acknowledgement is refused if another node leads)
    and start it again waiting: it gets jobs at the next term."""
    while True:
        try:
            term = await candidate.lead()
        except Exception:  # a server error, not a lost connection: try again shortly
            log.exception("leader_election_failed", node=queue.node)
            await asyncio.sleep(_HEARTBEAT_S)
            continue
        queue.begin_term(term)
        while not queue.lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HEARTBEAT_S):
                    await queue.lost.wait()
            if queue.lost.is_set() or not await candidate.still_leading():
                break
        log.warning("leadership_lost", node=queue.node, epoch=term.epoch)
        queue.depose()
        await worker.stop(grace)
        await queue.end_term()
        await candidate.resign()
        worker.start()


_FQDN_WAIT_S = 2.0


async def _fqdn_ctx(app: web.Application) -> AsyncIterator[None]:
    """Add the machine's fully qualified name to the default Host names. It may ask DNS,
    so it runs in a thread and is given up after a short wait."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_FQDN_WAIT_S):  # not wait_for: see bridge/relay.py
            fqdn = await loop.run_in_executor(None, socket.getfqdn)
    except (TimeoutError, OSError):
        log.info("fqdn_unknown", detail="the host name's domain did not resolve in time")
    else:
        if fqdn and fqdn != "localhost":
            app[STATE].guard.add_names([fqdn])
    yield


async def _close_idle(app: web.Application) -> None:
    """Close the matches that received no event for `[stats] idle_close_minutes`.

    Events still waiting in the queue are not known yet: the clock used is the arrival
    of the oldest waiting one, so a worker that lags never closes a match early.
    """
    idle_s = app[SETTINGS].stats.idle_close_minutes * 60.0
    every = min(_IDLE_CHECK_MAX_S, max(0.05, idle_s / 4))
    while True:
        await asyncio.sleep(every)
        postgres = app.get(POSTGRES)
        if postgres is not None and not postgres.leading:
            continue  # only the leader writes the statistics
        try:
            now = time.time()
            waiting = (await app[QUEUE].stats()).oldest_pending_age_s
            if waiting is not None:
                now -= waiting
            await app[STATS].close_idle(idle_s, before=now)
        except StatsUnavailableError:
            pass  # the store said so once (stats_damaged), or the database is away
        except Exception:
            log.exception("idle_close_failed")


async def _maintain(app: web.Application) -> None:
    """Hourly upkeep: forget expired Idempotency-Keys."""
    while True:
        try:
            purged = await app[QUEUE].purge_idempotency_keys()
        except Exception:
            log.exception("maintenance_failed")
        else:
            if purged:
                log.info("idempotency_keys_purged", count=purged)
        await asyncio.sleep(_PURGE_EVERY_S)

