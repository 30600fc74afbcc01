"""The `forward` handler: POST each event, in order, to another server.

It sends ``Idempotency-Key: <key_prefix><seq>``, so a receiver that honours it (another
collector does) stores a re-sent event once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import aiohttp
import orjson
import structlog

from collector.errors import ConfigError, PermanentError
from collector.handlers.base import HandlerContext
from collector.jobs import Handler, Job

log = structlog.get_logger(__name__)

_RETRYABLE_4XX: Final = frozenset({408, 429})


class ForwardError(Exception):
    """Forwarding failed in a way worth retrying (connection, timeout, 408/429/5xx)."""


class Forwarder:
    """POST each event, in order, to a URL; non-2xx raises (4xx but 408/429: permanent)."""

    def __init__(self, url: str, *, timeout: float = 10.0, token: str | None = None,
                 key_prefix: str = "collector-") -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token = token
        self._prefix = key_prefix
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the HTTP client session."""
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, job: Job) -> None:
        """The handler: POST the event; return on 2xx, raise otherwise."""
        if self._session is None:
            raise ForwardError("the forwarder is not open")
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": f"{self._prefix}{job.seq}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if job.source is not None:
            headers["X-Source"] = job.source
        if job.sequence is not None:
            headers["X-Sequence"] = str(job.sequence)
        try:
            async with self._session.post(self._url, data=orjson.dumps(job.payload),
                                          headers=headers, allow_redirects=False) as resp:
                status = resp.status
                reason = resp.reason or ""
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ForwardError(f"POST {self._url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        message = f"POST {self._url}: HTTP {status} {reason}".rstrip()
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentError(message)
        raise ForwardError(message)


@asynccontextmanager
async def forward_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`forward`: POST each event, in order, to [forward] url."""
    f = context.settings.forward
    if f.url is None:
        raise ConfigError("forward.url: required by the forward handler")
    forwarder = Forwarder(f.url, timeout=f.timeout, token=f.token, key_prefix=f.key_prefix)
    await forwarder.open()
    try:
        yield forwarder.send
    finally:
        await forwarder.close()
