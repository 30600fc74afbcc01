"""Who may talk to the daemon, and from which page: the Host allowlist, the Origin
check and CORS.

- **Host.** A page on the internet can rebind its own name to the home server's
  address (DNS rebinding); the browser then sends that name in ``Host``. A request
  whose Host is not one of the daemon's names gets ``421`` before any other work. The
  names: ``[server] allowed_hosts``, or by default the listening address, localhost,
  127.0.0.1, [::1], the host name, its ``.local`` name and its fully qualified name.
  An address the client actually connected to is always its own name (this covers
  every interface of a daemon on 0.0.0.0, and socket activation): a rebinding page
  cannot send an address as its Host, only its name.
- **Origin.** A browser names the page that sends a request in ``Origin``. A request
  that changes state (any method but GET, HEAD, OPTIONS) from a page that is not the
  daemon's own (same host and port as the request's Host) or one of ``[server]
  cors_origins`` gets ``403``. Clients that send no Origin (the bridge, curl, plugins)
  are not affected.
- **CORS.** Only for ``[server] cors_origins`` (none by default): their requests get
  ``Access-Control-Allow-Origin`` and their preflight ``OPTIONS`` a ``204``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from collector.config import ServerSettings

#: Methods that only read: no Origin check.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths any Host may ask for (a load balancer's health check knows no name).
OPEN_PATHS: Final = frozenset({"/healthz"})
_CORS_METHODS: Final = "GET, POST, DELETE"
_CORS_HEADERS: Final = ("Authorization, Content-Type, Content-Encoding, Idempotency-Key, "
                        "X-Source, X-Sequence")
_CORS_EXPOSE: Final = "Retry-After, X-Next-Cursor, X-Pending-Count"
_WILDCARD_LISTEN: Final = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - names, not a bind


def default_names(host: str, hostname: str) -> set[str]:
    """The names a daemon listening on `host` answers to on a machine called `hostname`."""
    names = {"localhost", "127.0.0.1", "::1"}
    if host not in _WILDCARD_LISTEN:
        names.add(host)
    short = hostname.strip().rstrip(".").lower()
    if short:
        names.add(short)
        base = short.split(".")[0]
        names.update({base, f"{base}.local"})
    return {normalise(name) for name in names}


def normalise(host: str) -> str:
    """A host as compared: lower case, no brackets around IPv6, no trailing dot."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_host(header: str) -> tuple[str, str | None]:
    """``Host`` header -> (host, port or None); IPv6 in brackets."""
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return normalise(header), None
        rest = header[end + 1:]
        return normalise(header[: end + 1]), rest[1:] if rest.startswith(":") else None
    host, sep, port = header.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return normalise(host), port
    return normalise(header), None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Guard:
    """The Host, Origin and CORS rules of one application."""

    def __init__(self, names: Iterable[str] | None, cors_origins: Iterable[str] = ()) -> None:
        """`names` None: any Host (the check is off)."""
        self.any_host = names is None
        self.names: set[str] = set()
        self.suffixes: tuple[str, ...] = ()
        if names is not None:
            self.add_names(names)
        self.cors = frozenset(o.lower() for o in cors_origins)

    @classmethod
    def from_settings(cls, server: ServerSettings) -> Guard:
        """The configured names, or the defaults (the FQDN comes later: add_names)."""
        if "*" in server.allowed_hosts:
            return cls(None, server.cors_origins)
        names = server.allowed_hosts or default_names(server.host, socket.gethostname())
        return cls(names, server.cors_origins)

    @property
    def configured(self) -> bool:
        return self.any_host or bool(self.names)

    def add_names(self, names: Iterable[str]) -> None:
        for name in names:
            if name.startswith("*."):
                self.suffixes = (*self.suffixes, normalise(name[1:]))
            else:
                self.names.add(normalise(name))

    def host_allowed(self, request: web.Request) -> bool:
        """Whether the request's Host is one of this daemon's names or addresses."""
        if self.any_host or request.path in OPEN_PATHS:
            return True
        header = request.headers.get(hdrs.HOST)
        if header is None:
            return True  # HTTP/1.0 with no Host: no browser sends that
        host, _port = split_host(header)
        if host in self.names or (self.suffixes and host.endswith(self.suffixes)):
            return True
        asked = _address(host)
        if asked is None:
            return False
        local = _local_address(request)
        return local is not None and asked == local

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether a request that changes state may come from the page that sent it."""
        if request.method in SAFE_METHODS:
            return True
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return True  # not a browser page (bridge, curl, plugin)
        if origin.lower() in self.cors:
            return True
        parts = urlsplit(origin)
        own = request.headers.get(hdrs.HOST)
        if not parts.netloc or own is None or parts.scheme not in ("http", "https"):
            return False  # "null" (a sandboxed frame, a file), or unreadable
        return split_host(parts.netloc) == split_host(own)

    def cors_origin(self, request: web.Request) -> str | None:
        """The request's Origin when it is one of cors_origins, else None."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin.lower() in self.cors:
            return origin
        return None

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight from a configured origin, else None."""
        if request.method != "OPTIONS" or self.cors_origin(request) is None:
            return None
        if hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers:
            return None
        return web.Response(status=204, headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: _CORS_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _CORS_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: "600",
        })

    async def on_response_prepare(self, request: web.Request,
                                  response: web.StreamResponse) -> None:
        """CORS headers on every answer to a configured origin (streams included)."""
        origin = self.cors_origin(request)
        if origin is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _CORS_EXPOSE
        response.headers.add(hdrs.VARY, "Origin")


def _local_address(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and sockname and isinstance(sockname[0], str):
        return _address(sockname[0])
    return None
