"""The Poster: one batch at a time to the collector, retried until it is taken or refused
for good (a refused batch is split to find the event at fault).
"""

import asyncio
import contextlib
import random
import re
import time
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson
import structlog

from collector.bridge.spool import Batch, DeadLetter
from collector.retry import backoff_delay

log = structlog.get_logger(__name__)


DEFAULT_GAME_PORT: Final = 49123
_READ_SIZE: Final = 65536
_MAX_RETRY_AFTER_S: Final = 600.0
#: Statuses that say the bridge is misconfigured (token, URL) or speaks a format the
#: server does not take (415: gzip or NDJSON): true of every batch, not of this one.
_CONFIG_STATUSES: Final = frozenset({401, 403, 404, 405, 407, 415})
#: Statuses that are retried as they are (the server is busy or failing).
_RETRY_STATUSES: Final = frozenset({408, 425, 429})
#: A refused batch with one of these statuses is split to find the event at fault.
_SPLIT_STATUSES: Final = frozenset({400, 413})


def events_url(base: str) -> str:
    """`http://host:port` (or with a path prefix) -> the collector's /v1/events URL."""
    url = base.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ValueError(f"not an http(s) URL: {base!r}")
    return url if url.endswith("/v1/events") else url + "/v1/events"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


@dataclass(slots=True)
class PostCounters:
    """What the poster did since start."""

    sent_events: int = 0
    sent_batches: int = 0
    failed_attempts: int = 0
    set_aside_events: int = 0


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int  # 0: no answer (connection error, timeout)
    error: str
    detail: str
    retry_after: float | None = None


class Poster:
    """Posts batches to the collector, one request at a time, until each is settled."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        token: str | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._url = url
        self._token = token
        self._base = backoff_base
        self._cap = backoff_cap
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._rng = rng or random.Random()
        self.counters = PostCounters()
        #: One word for the status line: "idle", "ok", "retrying", "refusing".
        self.state = "idle"
        #: Why, when the state is not "ok".
        self.reason = ""

    async def deliver(self, batch: Batch, body: bytes | None = None) -> list[DeadLetter]:
        """Post `batch` until the collector takes it; return the parts it refused for good."""
        payload = batch.encode() if body is None else body
        attempt = 0
        while True:
            attempt += 1
            answer = await self._post(batch, payload)
            if 200 <= answer.status < 300:
                self.state, self.reason = "ok", ""
                self.counters.sent_events += len(batch.events)
                self.counters.sent_batches += 1
                return []
            status = answer.status
            refused = (400 <= status < 500 and status not in _CONFIG_STATUSES
                       and status not in _RETRY_STATUSES)
            if refused:
                return await self._refused(batch, answer)
            self.counters.failed_attempts += 1
            if status in _CONFIG_STATUSES:
                delay = self._cap
                self.state = "refusing"
                hint = {401: "check --token", 403: "check --token", 415: "upgrade the collector"
                        }.get(status, "check --to")
                log.error("collector_refuses", status=status, error=answer.error,
                          detail=answer.detail, hint=hint, retry_in_s=delay,
                          source=batch.source, sequence=batch.sequence)
            else:
                delay = (answer.retry_after if answer.retry_after is not None
                         else backoff_delay(attempt, base=self._base, cap=self._cap,
                                            rng=self._rng))
                self.state = "retrying"
                log.warning("post_failed", status=status or None, error=answer.error,
                            detail=answer.detail, attempt=attempt,
                            retry_in_s=round(delay, 3), source=batch.source,
                            sequence=batch.sequence, events=len(batch.events))
            self.reason = f"HTTP {status} {answer.error}" if status else answer.error
            await asyncio.sleep(delay)

    async def _refused(self, batch: Batch, answer: _Answer) -> list[DeadLetter]:
        if len(batch.events) > 1 and answer.status in _SPLIT_STATUSES:
            log.warning("batch_refused_splitting", status=answer.status, error=answer.error,
                        detail=answer.detail, source=batch.source, sequence=batch.sequence,
                        events=len(batch.events))
            first, second = batch.halves()
            return [*await self.deliver(first), *await self.deliver(second)]
        log.error("batch_set_aside", status=answer.status, error=answer.error,
                  detail=answer.detail, source=batch.source, sequence=batch.sequence,
                  events=len(batch.events), key=batch.key)
        self.counters.set_aside_events += len(batch.events)
        detail = f"{answer.error}: {answer.detail}" if answer.error else answer.detail
        return [DeadLetter(batch=batch, status=answer.status, detail=detail,
                           failed_at=time.time())]

    async def _post(self, batch: Batch, body: bytes) -> _Answer:
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            "X-Source": batch.source,
            "X-Sequence": str(batch.sequence),
            "Idempotency-Key": batch.key,
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session.post(self._url, data=body, headers=headers,
                                          timeout=self._timeout) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Answer(0, type(exc).__name__, str(exc) or type(exc).__name__)
        error, detail = "", text[:500]
        if status >= 300:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                data = orjson.loads(text)
                error, detail = str(data.get("error", "")), str(data.get("detail", ""))
        return _Answer(status, error or f"http_{status}", detail, retry_after)


# -- status ---------------------------------------------------------------------------------
