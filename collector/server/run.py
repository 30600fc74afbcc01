"""Run the daemon: AppRunner + TCPSite (HTTPS with a certificate), signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import ssl
from pathlib import Path

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
    tls = await load_tls(settings)  # a bad certificate stops us before anything is opened
    scheme = "http" if tls is None else "https"
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
            [web.SockSite(runner, sock, backlog=1024, ssl_context=tls) for sock in inherited]
            if inherited
            else [web.TCPSite(runner, settings.server.host, settings.server.port,
                              backlog=1024, reuse_address=True, ssl_context=tls)]
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
        state.warnings = open_without_token(addresses, has_token=state.token is not None,
                                            scheme=scheme)
        for warning in state.warnings:
            log.warning("listening_without_token", detail=warning)
        record_daemon(settings.server.data_dir, [local_url(a, scheme) for a in addresses],
                      cert_file=None if tls is None else settings.server.tls_cert_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if inherited:
            log.info("listening", scheme=scheme, sockets=[site.name for site in sites],
                     inherited=True, pending=app[QUEUE].pending,
                     data_dir=str(settings.server.data_dir))
        else:
            log.info("listening", scheme=scheme, host=settings.server.host,
                     port=settings.server.port, pending=app[QUEUE].pending,
                     data_dir=str(settings.server.data_dir))
        notifier = app[NOTIFIER]
        # The port answers, recovery is done.
        notifier.ready(await queue_status(app[QUEUE]))
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


def open_without_token(addresses: list[tuple[str, int]], *, has_token: bool,
                       scheme: str = "http") -> list[str]:
    """A warning for each address other machines can reach when no token is set."""
    if has_token:
        return []
    return [f"listening on {daemon_url(a, scheme)} without a token: anyone who can reach it can "
            "post events and drop dead letters (set server.token_file)"
            for a in addresses if not _loopback(a[0])]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


#: A client on this machine reaches a daemon bound to every interface at loopback; the
#: wildcard itself is no address to connect to, nor a name the Host check knows.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - names, not a bind


def local_url(address: tuple[str, int], scheme: str = "http") -> str:
    """The URL a command on this machine uses for a bound address (daemon.json)."""
    host, port = address
    return daemon_url((_WILDCARD_TO_LOOPBACK.get(host, host), port), scheme)


def daemon_url(address: tuple[str, int], scheme: str = "http") -> str:
    """http(s)://host:port for a bound address (IPv6 in brackets)."""
    host, port = address
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# -- HTTPS ------------------------------------------------------------------------------------


class _EncryptedKeyError(Exception):
    """The key file asks for a passphrase (which a daemon has nobody to ask)."""


def _no_passphrase() -> str:
    raise _EncryptedKeyError


async def load_tls(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context when server.tls_cert_file and tls_key_file are set (None
    otherwise), loaded in a thread; any problem with the files is a one-line StartupError
    that names the setting and the file."""
    cert, key = settings.server.tls_cert_file, settings.server.tls_key_file
    if cert is None or key is None:  # config.py refuses one without the other
        return None
    return await asyncio.get_running_loop().run_in_executor(None, server_tls_context, cert, key)


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An SSLContext for serving with the PEM certificate (chain) `cert` and its key `key`:
    TLS 1.2 at least, Python's server defaults otherwise. Blocking (it reads the files)."""
    _readable(cert, "server.tls_cert_file", "certificate")
    _readable(key, "server.tls_key_file", "private key")
    try:  # the certificate alone first, so that a failure below is the key's
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise StartupError(f"server.tls_cert_file: {cert} holds no PEM certificate") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKeyError:
        raise StartupError(f"server.tls_key_file: {key} is encrypted with a passphrase, which "
                           "the daemon cannot ask for (write it without one: openssl pkey "
                           "-in KEY -out NEW_KEY)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(f"server.tls_key_file: {key} is not the key of the "
                               f"certificate in {cert} (server.tls_cert_file)") from None
        raise StartupError(f"server.tls_key_file: {key} holds no PEM private key") from None
    except OSError as exc:  # changed since it was read just now
        raise StartupError(f"server.tls_cert_file, tls_key_file: cannot read {cert} or "
                           f"{key} ({_strerror(exc)})") from None
    return context


def _readable(path: Path, setting: str, what: str) -> None:
    """A one-line StartupError unless `path` is a file this user can read."""
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise StartupError(f"{setting}: no such file {path} (the {what}, PEM)") from None
    except IsADirectoryError:
        raise StartupError(f"{setting}: {path} is a folder, not a {what} file") from None
    except OSError as exc:
        raise StartupError(f"{setting}: cannot read {path} ({_strerror(exc)})") from None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
