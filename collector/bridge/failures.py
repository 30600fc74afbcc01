"""Failures of the bridge, `replay` and `record` said plainly, in one line each.

aiohttp and the socket module describe a refused connection as
``Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]``
or ``[Errno 111] Connection refused``; the log lines and the one-line errors say
``cannot connect to http://127.0.0.1:9 (connection refused)`` instead.
"""

from __future__ import annotations

import errno
import re
import socket
from typing import Final

import aiohttp
from yarl import URL

_REASONS: Final = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EPIPE: "connection closed",
}
_ERRNO_IN_TEXT: Final = re.compile(r"\[Errno (-?\d+)\]")


class DeliveryFailed(Exception):
    """A one-shot sender (`replay`) gave up: the collector refuses every batch (a wrong
    token or URL) or could not be reached in time. The message is one line."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def origin(url: str) -> str:
    """`http://host:port/prefix/v1/events` -> `http://host:port` (what a connection goes to)."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return url


def os_reason(exc: BaseException) -> str:
    """A socket error in a few words: "connection refused", "unknown host", "timed out"."""
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        code = exc.errno
        if code is None:  # several addresses tried: "Multiple exceptions: [Errno 111] ..."
            codes = {int(found) for found in _ERRNO_IN_TEXT.findall(str(exc))}
            code = codes.pop() if len(codes) == 1 else None
        if code in _REASONS:
            return _REASONS[code]
        if exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def request_failure(exc: BaseException, url: str, *, timeout: float | None = None) -> str:
    """Why a request to `url` got no answer, in one line naming where it went."""
    where = origin(url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot connect to {where} (unknown host)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"cannot connect to {where} (TLS certificate not accepted)"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return f"cannot connect to {where} (TLS handshake failed)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {where} ({os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection without answering"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        within = f" within {timeout:g} s" if timeout else ""
        return f"no answer from {where}{within}"
    if isinstance(exc, OSError):
        return f"the connection to {where} failed ({os_reason(exc)})"
    text = " ".join(str(exc).split())[:200]
    return f"the request to {where} failed ({type(exc).__name__}{': ' if text else ''}{text})"


__all__ = ["DeliveryFailed", "origin", "os_reason", "request_failure"]
