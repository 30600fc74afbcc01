"""The Poster: one batch at a time to the collector, retried until it is taken or refused
for good (a refused batch is split to find the event at fault).

The bridge retries forever (its spool keeps everything). A one-shot sender (`replay`)
sets `give_up_after` and `stop_on_misconfig`: then a collector that cannot be reached
for that long, or that answers with a status saying the sender is misconfigured (a
wrong token or URL), ends the delivery with :class:`DeliveryFailed` and one line.
"""

import asyncio
import contextlib
import random
import re
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Final

import aiohttp
import orjson
import structlog
from yarl import URL

from collector.bridge.failures import (
    CA_HINT,
    DeliveryFailed,
    certificate_rejected,
    request_failure,
)
from collector.bridge.spool import Batch, DeadLetter
from collector.retry import backoff_delay

log = structlog.get_logger(__name__)


DEFAULT_GAME_PORT: Final = 49123
_READ_SIZE: Final = 65536
_MAX_RETRY_AFTER_S: Final = 600.0
#: Statuses that say the bridge is misconfigured (token, URL) or speaks a format the
#: server does not take (415: gzip or NDJSON): true of every batch, not of this one.
#: 421: the collector does not answer to the name in the URL (its Host allowlist).
_CONFIG_STATUSES: Final = frozenset({401, 403, 404, 405, 407, 415, 421})
#: Statuses that are retried as they are (the server is busy or failing).
_RETRY_STATUSES: Final = frozenset({408, 425, 429})
#: A refused batch with one of these statuses is split to find the event at fault.
_SPLIT_STATUSES: Final = frozenset({400, 413})
_TAG: Final = re.compile(r"<[^>]*>")


#: What to check for each status that says the sender is misconfigured.
_HINTS: Final = {401: "check --token or --token-file", 403: "check --token or --token-file",
                 407: "check the proxy settings", 415: "upgrade the collector",
                 421: "the collector does not answer to the name in --to: use its address, "
                      "or add the name to its [server] allowed_hosts"}


def events_url(base: str) -> str:
    """`http://host:port` (or with a path prefix) -> the collector's /v1/events URL.

    ValueError (one line) for anything that is not an absolute http(s) URL with a host.
    """
    text = base.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in {"http", "https"}:
        rest = rest if sep else text
        raise ValueError(f"not an http(s) URL: {base!r} (like http://{rest or 'HOST:PORT'})")
    url = text.rstrip("/")
    try:
        parsed = URL(url)
        host, port = parsed.host, parsed.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {base!r} ({str(exc).lower()})") from None
    if not rest.strip("/") or not host or port is None:
        raise ValueError(f"no host in {base!r} (like http://HOST:PORT)")
    if any(ch.isspace() for ch in host):
        raise ValueError(f"not a valid host in {base!r}: {host!r}")
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"{base!r}: a collector URL has no ?query or #fragment")
    return url if url.endswith("/v1/events") else url + "/v1/events"


def client_ssl(ca_file: Path) -> ssl.SSLContext:
    """How a client checks an https:// collector that a private CA signed, or whose
    certificate is self-signed: the certificates in the PEM file `ca_file` as the only
    trusted issuers, host name checked. Blocking (it reads the file). ValueError, one line
    naming the file, when `ca_file` cannot be used.

    A certificate in the file is trusted as it is, even one that a CA signed (the
    server's own certificate, say): partial chains are on, as in Python 3.13's default.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ValueError(f"no such file {ca_file}") from None
    except IsADirectoryError:
        raise ValueError(f"{ca_file} is a folder, not a PEM certificate file") from None
    except ssl.SSLError:
        raise ValueError(f"{ca_file} holds no PEM certificate") from None
    except OSError as exc:
        text = exc.strerror or str(exc)
        raise ValueError(f"cannot read {ca_file} ({text[:1].lower() + text[1:]})") from None
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _page_text(text: str) -> str:
    """A body that is not JSON (a proxy's or another server's page): its first words,
    without HTML tags, on one line."""
    if text.lstrip().startswith("<"):
        text = _TAG.sub(" ", text)
    return " ".join(text.split())[:120]


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
    error: str  # the error code of a JSON answer; with no answer: why, in plain words
    detail: str
    retry_after: float | None = None
    #: No answer because this client refused the server's certificate: a setting of the
    #: sender, like a wrong token (status 0).
    untrusted: bool = False

    def text(self) -> str:
        """The answer in one line: `HTTP 401 Unauthorized (unauthorized: ...)`, or why
        there was none (`cannot connect to http://host:port (connection refused)`)."""
        if not self.status:
            return self.error
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = ""
        head = f"HTTP {self.status} {phrase}".rstrip()
        why = ": ".join(part for part in (self.error, self.detail)
                        if part and part != f"http_{self.status}")
        return f"{head} ({why})" if why else head


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
        give_up_after: float | None = None,
        stop_on_misconfig: bool = False,
    ) -> None:
        self._session = session
        self._url = url
        self._token = token
        self._base = backoff_base
        self._cap = backoff_cap
        self._request_timeout = request_timeout
        self._rng = rng or random.Random()
        #: None: retry forever (the bridge); else give up (DeliveryFailed) when a batch
        #: is still not taken this many seconds after its first try.
        self._give_up_after = give_up_after
        #: True: a status that says the sender is misconfigured (401, 403, 404, ...) ends
        #: the delivery at once (DeliveryFailed) instead of being retried at the cap.
        self._stop_on_misconfig = stop_on_misconfig
        self.counters = PostCounters()
        #: One word for the status line: "idle", "ok", "retrying", "refusing".
        self.state = "idle"
        #: Why, when the state is not "ok".
        self.reason = ""
        #: The last answer that set a batch aside, in one line ("" when none did).
        self.last_refusal = ""

    async def deliver(self, batch: Batch, body: bytes | None = None) -> list[DeadLetter]:
        """Post `batch` until the collector takes it; return the parts it refused for good."""
        payload = batch.encode() if body is None else body
        attempt = 0
        deadline = (None if self._give_up_after is None
                    else time.monotonic() + self._give_up_after)
        while True:
            attempt += 1
            timeout = self._request_timeout
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 1.0))
            answer = await self._post(batch, payload, timeout)
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
            self.reason = answer.text()
            if answer.untrusted:
                # Retried like a wrong token (the spool keeps everything), until the flag
                # is fixed or the server's certificate changes.
                if self._stop_on_misconfig:
                    self.state = "refusing"
                    raise DeliveryFailed(answer.text())
                delay = self._cap
                self.state = "refusing"
                log.error("collector_certificate_rejected", error=answer.text(),
                          hint=f"{CA_HINT} (the collector's certificate or its CA)",
                          retry_in_s=delay, source=batch.source, sequence=batch.sequence)
            elif status in _CONFIG_STATUSES:
                hint = _HINTS.get(status, "check --to")
                if self._stop_on_misconfig:
                    self.state = "refusing"
                    raise DeliveryFailed(f"{self._url} answered {answer.text()}; {hint}",
                                         status=status)
                delay = self._cap
                self.state = "refusing"
                log.error("collector_refuses", status=status, error=answer.error,
                          detail=answer.detail, hint=hint, retry_in_s=delay,
                          source=batch.source, sequence=batch.sequence)
            else:
                delay = (answer.retry_after if answer.retry_after is not None
                         else backoff_delay(attempt, base=self._base, cap=self._cap,
                                            rng=self._rng))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        said = f"{self._url} answered {answer.text()}" if status else answer.text()
                        raise DeliveryFailed(
                            f"{said}; gave up after {self._give_up_after:g} s "
                            "(--give-up-after)", status=status)
                    delay = min(delay, left)
                self.state = "retrying"
                log.warning("post_failed", error=answer.text(), attempt=attempt,
                            retry_in_s=round(delay, 3), source=batch.source,
                            sequence=batch.sequence, events=len(batch.events),
                            **({"status": status} if status else {}))
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
        self.last_refusal = answer.text()
        detail = f"{answer.error}: {answer.detail}" if answer.error else answer.detail
        return [DeadLetter(batch=batch, status=answer.status, detail=detail,
                           failed_at=time.time())]

    async def _post(self, batch: Batch, body: bytes, seconds: float) -> _Answer:
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
            async with self._session.post(
                    self._url, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Answer(0, request_failure(exc, self._url, timeout=seconds), "",
                           untrusted=certificate_rejected(exc))
        error, detail = "", _page_text(text)
        if status >= 300:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                data = orjson.loads(text)
                error = " ".join(str(data.get("error", "")).split())
                detail = " ".join(str(data.get("detail", "")).split())[:300]
        return _Answer(status, error or f"http_{status}", detail, retry_after)


# -- status ---------------------------------------------------------------------------------
