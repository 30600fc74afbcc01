"""Run the daemon: AppRunner + TCPSite, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import signal

import structlog
from aiohttp import web

from collector import __version__
from collector.config import Settings, describe_changes
from collector.errors import StartupError
from collector.files import forget_daemon, record_daemon
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
    log.info("starting", version=__version__, data_dir=str(settings.server.data_dir),
             settings_changed=describe_changes(settings))
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
        addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
        state = app[STATE]
        state.warnings = open_without_token(addresses, has_token=state.token is not None)
        for warning in state.warnings:
            log.warning("listening_without_token", detail=warning)
        record_daemon(settings.server.data_dir, [daemon_url(a) for a in addresses])
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
        forget_daemon(settings.server.data_dir)
        await runner.cleanup()
    log.info("stopped")


def open_without_token(addresses: list[tuple[str, int]], *, has_token: bool) -> list[str]:
    """A warning for each address other machines can reach when no token is set."""
    if has_token:
        return []
    return [f"listening on {daemon_url(a)} without a token: anyone who can reach it can "
            "post events and drop dead letters (set server.token_file)"
            for a in addresses if not _loopback(a[0])]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def daemon_url(address: tuple[str, int]) -> str:
    """http://host:port for a bound address (IPv6 in brackets)."""
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
