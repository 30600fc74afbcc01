"""Failures of the bridge, `replay` and `record` said plainly, in one line each.

aiohttp and the socket module describe a refused connection as
``Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]``
or ``[Errno 111] Connection refused``; the log lines and the one-line errors say
``cannot connect to http://127.0.0.1:9 (connection refused)`` instead.

Over HTTPS, a certificate the client does not accept says what to do about it:
``https://homeserver:8765: certificate not trusted (self-signed? pass --ca-file FILE)``.
That is a setting of the sender, like a wrong token: :func:`certificate_rejected`.
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
#: OpenSSL's verification results (X509_V_ERR_*) that say "nothing trusted here issued
#: this certificate": unable to get the issuer (2, 20), unable to verify the leaf (21),
#: self-signed (18), a self-signed root in the chain (19).
_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21})
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_NAME_MISMATCH: Final = frozenset({62, 64})  # host name, IP address
#: The flag that makes a client trust a private certificate (bridge, replay, the admin
#: commands all spell it so).
CA_HINT: Final = "pass --ca-file FILE"


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


def certificate_rejected(exc: BaseException) -> bool:
    """True when `exc` is the server's certificate refused by this client: a setting of
    the sender to fix (--ca-file, the URL's host name), not a failure that passes."""
    return isinstance(exc, aiohttp.ClientConnectorCertificateError)


def certificate_problem(exc: aiohttp.ClientConnectorCertificateError, host: str) -> str:
    """Why the certificate was refused, and what to do: a few words."""
    error = exc.certificate_error
    code = getattr(error, "verify_code", None)
    if code in _UNTRUSTED:
        return f"certificate not trusted (self-signed? {CA_HINT})"
    if code in _NAME_MISMATCH:
        return (f"certificate not valid for {host} (use a host name or address that its "
                "subjectAltName lists)")
    if code == _EXPIRED:
        return "certificate expired (renew it on the server)"
    if code == _NOT_YET_VALID:
        return "certificate not valid yet (check the clocks)"
    message = getattr(error, "verify_message", None) or " ".join(str(error).split())
    return f"certificate not accepted ({message})"


def request_failure(exc: BaseException, url: str, *, timeout: float | None = None) -> str:
    """Why a request to `url` got no answer, in one line naming where it went."""
    where = origin(url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot connect to {where} (unknown host)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"{where}: {certificate_problem(exc, exc.host)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        reason = getattr(exc.os_error, "reason", None)
        if reason == "WRONG_VERSION_NUMBER":
            return (f"cannot connect to {where} (TLS handshake failed: the server does not "
                    "speak TLS; plain HTTP? use http://)")
        why = reason.lower().replace("_", " ") if reason else os_reason(exc.os_error)
        return f"cannot connect to {where} (TLS handshake failed: {why})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {where} ({os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        if where.startswith("http://"):  # an HTTPS port drops a plain request unanswered
            return f"{where} closed the connection without answering (an HTTPS port? use https://)"
        return f"{where} closed the connection without answering"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        within = f" within {timeout:g} s" if timeout else ""
        return f"no answer from {where}{within}"
    if isinstance(exc, OSError):
        return f"the connection to {where} failed ({os_reason(exc)})"
    text = " ".join(str(exc).split())[:200]
    return f"the request to {where} failed ({type(exc).__name__}{': ' if text else ''}{text})"


__all__ = ["CA_HINT", "DeliveryFailed", "certificate_problem", "certificate_rejected", "origin",
           "os_reason", "request_failure"]
