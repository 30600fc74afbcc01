"""Run the daemon: AppRunner + TCPSite, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from collector.config import Settings, describe
from collector.errors import StartupError
from collector.server.app import create_app
from collector.server.appkeys import NOTIFIER, QUEUE, STATE
from collector.server.systemd import listen_sockets, queue_status

#: The interpreter's GIL switch interval for the daemon (CPython's default is 5 ms).
#: The queue's SQLite thread needs the GIL back after every fsync, and a busy event loop
#: hands it over only when forced to, after this interval: with 5 ms a group of requests
#: waits up to 5 ms longer for its answer while the loop runs out of work. Measured in
#: turns against the default (8 s runs, single events, 32 connections): 8,229 against
#: 7,244 req/s on average, higher in each of four rounds; 100-event arrays higher too.
#: 0.2 ms and 1 ms did worse than 0.5 ms. Process-wide, so only `collector serve` sets it.
GIL_SWITCH_INTERVAL_S = 0.0005

log = structlog.get_logger(__name__)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then stop taking requests, finish the job and close."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout,
        # aiohttp arms this timer when a connection opens and after each answer, and
        # closes the connection if no complete request head has arrived when it fires:
        # the deadline for the head phase (the body's is in api.post_events).
        keepalive_timeout=settings.server.read_timeout,
    )
    inherited = listen_sockets()  # socket activation: systemd already listens for us
    log.info("starting", settings=describe(settings))
    await runner.setup()  # opens the queue, replays nothing yet, starts the worker
    try:
        sites: list[web.BaseSite] = (
            [web.SockSite(runner, sock, backlog=1024) for sock in inherited] if inherited
            else [web.TCPSite(runner, settings.server.host, settings.server.port,
                              backlog=1024, reuse_address=True)]
        )
        try:
            for site in sites:
                await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.server.host}:{settings.server.port}: "
                f"{exc.strerror or exc}"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if inherited:
            log.info("listening", sockets=[site.name for site in sites], inherited=True,
                     pending=app[QUEUE].pending, data_dir=str(settings.server.data_dir))
        else:
            log.info("listening", host=settings.server.host, port=settings.server.port,
                     pending=app[QUEUE].pending, data_dir=str(settings.server.data_dir))
        notifier = app[NOTIFIER]
        notifier.ready(await queue_status(app[QUEUE]))  # the port answers, recovery is done
        await stop.wait()
        log.info("stopping")
        app[STATE].stopping = True
        notifier.stopping(f"draining; {await queue_status(app[QUEUE])}")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
    log.info("stopped")
