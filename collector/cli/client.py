"""Where the commands find their data: the running daemon over HTTP, or the files of its
data dir. One way for every command (`status`, `dead`, `queue`, `export`, `import`,
`matches`, `players`).

By default a command asks the daemon at ``--url`` (default: the configured host:port,
i.e. http://127.0.0.1:8765, https:// when the config gives the daemon a certificate;
token from ``--token-file``, ``--token``, the config or systemd's credential file). Over
HTTPS the daemon's certificate is checked against ``--ca-file`` alone when it is given,
else against the system's trust store plus the daemon's own certificate file, as the
config names it (server.tls_cert_file) or as the daemon recorded it in its data dir's
daemon.json. With ``--data-dir`` it works on the data dir's files
instead: the queue file of a STOPPED daemon (the data dir's lock keeps a running one
and the command apart), or stats.db read-only (fine while the daemon runs). Commands
that only read (`status`, `matches`, `players`) fall back to the data dir when no
daemon answers at the configured address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import aiohttp
import orjson

from collector.bridge.failures import certificate_rejected, request_failure
from collector.cli.args import ca_file, http_url
from collector.config import Settings, check_token, load_settings, read_token_file
from collector.errors import StartupError
from collector.files import LOCK_FILE, locked_data_dir
from collector.jobs import job_json
from collector.queue import DurableQueue, dead_json

NDJSON: Final = "application/x-ndjson"
IMPORT_BATCH: Final = 500  # events per request or put
IMPORT_BYTES: Final = 512 * 1024  # body bytes per request (below server.max_body_bytes)
_BUSY_RETRIES: Final = 120  # 503 answers (queue_full, shutting_down) waited out per batch
_T = TypeVar("_T")


class AdminError(Exception):
    """A one-line failure for the user (daemon unreachable, not found, refused)."""


class UnreachableError(AdminError):
    """No daemon answers at the address."""


# -- where the queue is: the daemon over HTTP, or the file of a stopped daemon ---------------


class Admin(Protocol):
    """The operations, whether over HTTP or on the data dir."""

    async def status(self) -> dict[str, Any]: ...
    async def dead_list(self, limit: int, offset: int) -> dict[str, Any]: ...
    async def dead_show(self, seq: int) -> dict[str, Any]: ...
    async def dead_retry(self, seqs: list[int] | None, *, tail: bool) -> dict[str, Any]: ...
    async def dead_drop(self, seqs: list[int] | None) -> dict[str, Any]: ...
    async def peek(self, limit: int) -> list[dict[str, Any]]: ...
    def export(self) -> AsyncIterator[dict[str, Any] | int]: ...
    async def put(self, batch: ImportBatch) -> tuple[int, bool]: ...


@dataclass(slots=True)
class ImportBatch:
    """Consecutive imported jobs that go in as one request (same source, numbering, time)."""

    payloads: list[Any] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    source: str | None = None
    sequence: int | None = None
    received_at: float | None = None
    size: int = 0

    def takes(self, job: dict[str, Any], blob: bytes, *, by_time: bool) -> bool:
        """True when `job` can join this batch without breaking its headers."""
        if not self.payloads:
            return True
        if len(self.payloads) >= IMPORT_BATCH or self.size + len(blob) > IMPORT_BYTES:
            return False
        if job.get("source") != self.source:
            return False
        if by_time and job.get("received_at") != self.received_at:
            return False
        if self.sequence is None:
            return job.get("sequence") is None
        return bool(job.get("sequence") == self.sequence + len(self.payloads))

    def add(self, job: dict[str, Any], blob: bytes) -> None:
        """Append one job (its payload, as the bytes to send)."""
        if not self.payloads:
            self.source, self.sequence = job.get("source"), job.get("sequence")
            self.received_at = job.get("received_at")
        self.payloads.append(job["payload"])
        self.blobs.append(blob)
        self.size += len(blob) + 1

    @property
    def key(self) -> str:
        """Idempotency-Key: the same export imported twice stores its events once."""
        digest = hashlib.sha256()
        digest.update(orjson.dumps([self.source, self.sequence, self.received_at]))
        for blob in self.blobs:
            digest.update(blob)
            digest.update(b"\n")
        return "import-" + digest.hexdigest()[:40]


class HttpAdmin:
    """The running daemon's HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self._session = session
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: dict[str, str] | None = None, ok: tuple[int, ...] = (200,)
                    ) -> tuple[int, Any]:
        url = self._url + path
        data = None if body is None else orjson.dumps(body)
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        try:
            async with self._session.request(method, url, data=data, params=params,
                                             headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if certificate_rejected(exc):  # reached, but not trusted: say so, never fall back
                raise AdminError(request_failure(exc, url)) from None
            raise UnreachableError(f"{method} {url}: {request_failure(exc, url)}") from None
        except aiohttp.ClientError as exc:
            raise AdminError(f"{method} {url}: {exc}") from None
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = raw.decode(errors="replace")
        if status not in ok:
            raise AdminError(f"{method} {url}: HTTP {status} {_explain(answer)}".rstrip())
        return status, answer

    async def get_json(self, path: str, params: dict[str, str] | None = None
                       ) -> dict[str, Any]:
        """GET `path` (a JSON object is expected)."""
        _, answer = await self._call("GET", path, params=params)
        if not isinstance(answer, dict):
            raise AdminError(f"GET {self._url}{path}: not a JSON object")
        return answer

    async def status(self) -> dict[str, Any]:
        """GET /v1/queue and /readyz."""
        _, queue = await self._call("GET", "/v1/queue")
        status, ready = await self._call("GET", "/readyz", ok=(200, 503))
        return {"source": self._url, "running": True, "ready": status == 200,
                "not_ready": None if status == 200 else _explain(ready), **queue}

    async def dead_list(self, limit: int, offset: int) -> dict[str, Any]:
        """GET /v1/dead."""
        _, page = await self._call("GET", "/v1/dead",
                                   params={"limit": str(limit), "offset": str(offset)})
        return dict(page)

    async def dead_show(self, seq: int) -> dict[str, Any]:
        """GET /v1/dead/{seq}."""
        status, dead = await self._call("GET", f"/v1/dead/{seq}", ok=(200, 404))
        if status == 404:
            raise AdminError(f"no dead letter with seq {seq}")
        return dict(dead)

    async def dead_retry(self, seqs: list[int] | None, *, tail: bool) -> dict[str, Any]:
        """POST /v1/dead/retry: one request, so the jobs keep their order."""
        body = {"all": True} if seqs is None else {"seqs": seqs}
        _, answer = await self._call("POST", "/v1/dead/retry",
                                     body={**body, "at": "tail" if tail else "place"})
        return dict(answer)

    async def dead_drop(self, seqs: list[int] | None) -> dict[str, Any]:
        """POST /v1/dead/drop."""
        _, answer = await self._call("POST", "/v1/dead/drop",
                                     body={"all": True} if seqs is None else {"seqs": seqs})
        return dict(answer)

    async def peek(self, limit: int) -> list[dict[str, Any]]:
        """GET /v1/queue/peek."""
        _, answer = await self._call("GET", "/v1/queue/peek", params={"limit": str(limit)})
        return list(answer["jobs"])

    async def export(self) -> AsyncIterator[dict[str, Any] | int]:
        """GET /v1/pending: first the expected count, then each job."""
        url = self._url + "/v1/pending"
        try:
            async with self._session.get(url, headers=self._headers) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise AdminError(f"GET {url}: HTTP {resp.status} {_explain(_loads(raw))}")
                yield int(resp.headers.get("X-Pending-Count", "0"))
                async for line in resp.content:
                    if line.strip():
                        yield orjson.loads(line)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if certificate_rejected(exc):
                raise AdminError(request_failure(exc, url)) from None
            raise AdminError(f"GET {url}: {request_failure(exc, url)}") from None

    async def put(self, batch: ImportBatch) -> tuple[int, bool]:
        """POST /v1/events with the batch's headers; waits out 503 answers."""
        headers = {**self._headers, "Content-Type": NDJSON, "Idempotency-Key": batch.key}
        if batch.source is not None:
            headers["X-Source"] = batch.source
        if batch.sequence is not None:
            headers["X-Sequence"] = str(batch.sequence)
        url = self._url + "/v1/events"
        body = b"\n".join(batch.blobs) + b"\n"
        for _ in range(_BUSY_RETRIES):
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status == 202:
                        answer = orjson.loads(raw)
                        return int(answer["accepted"]), \
                            resp.headers.get("Idempotent-Replayed") == "true"
                    if resp.status != 503:
                        raise AdminError(f"POST {url}: HTTP {resp.status} "
                                         f"{_explain(_loads(raw))}")
                    wait = float(resp.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                if certificate_rejected(exc):
                    raise AdminError(request_failure(exc, url)) from None
                raise AdminError(f"POST {url}: {request_failure(exc, url)}") from None
            await asyncio.sleep(min(wait, 10.0))
        raise AdminError(f"POST {url}: still busy (503) after {_BUSY_RETRIES} tries")


class LocalAdmin:
    """The queue file of a stopped daemon (this process holds the data dir's lock)."""

    def __init__(self, queue: DurableQueue, data_dir: Path) -> None:
        self._queue = queue
        self._dir = data_dir

    async def status(self) -> dict[str, Any]:
        """Numbers from the open queue."""
        stats = await self._queue.stats()
        return {"source": str(self._dir), "running": False, "ready": False,
                "not_ready": "the daemon is not running", "pending": stats.pending,
                "in_flight": stats.in_flight, "dead": stats.dead,
                "processed_total": stats.processed_total, "last_seq": stats.last_seq,
                "oldest_pending_age_s": stats.oldest_pending_age_s}

    async def dead_list(self, limit: int, offset: int) -> dict[str, Any]:
        """A page of dead letters."""
        dead = await self._queue.dead_letters(limit=limit, offset=offset)
        total = (await self._queue.stats()).dead
        return {"dead": [dead_json(d) for d in dead], "total": total, "offset": offset,
                "limit": limit}

    async def dead_show(self, seq: int) -> dict[str, Any]:
        """One dead letter."""
        dead = await self._queue.dead_letter_get(seq)
        if dead is None:
            raise AdminError(f"no dead letter with seq {seq}")
        return dead_json(dead)

    async def dead_retry(self, seqs: list[int] | None, *, tail: bool) -> dict[str, Any]:
        """Back in line, in one step."""
        chosen = await self._queue.dead_seqs() if seqs is None else seqs
        revived = await self._queue.retry_dead(chosen, at_tail=tail) if chosen else []
        return {"retried": len(revived), "seqs": [j.seq for j in revived],
                "at": "tail" if tail else "place"}

    async def dead_drop(self, seqs: list[int] | None) -> dict[str, Any]:
        """Deleted for good."""
        chosen = await self._queue.dead_seqs() if seqs is None else seqs
        return {"dropped": await self._queue.drop_dead(chosen) if chosen else 0}

    async def peek(self, limit: int) -> list[dict[str, Any]]:
        """The head of the line."""
        return [job_json(j) for j in await self._queue.peek(limit)]

    async def export(self) -> AsyncIterator[dict[str, Any] | int]:
        """The expected count, then every pending job in order."""
        yield self._queue.pending
        async for job in self._queue.pending_jobs():
            yield job_json(job)

    async def put(self, batch: ImportBatch) -> tuple[int, bool]:
        """One put per batch, with its original received_at."""
        accepted = await self._queue.put(batch.payloads, blobs=batch.blobs, source=batch.source,
                                         sequence=batch.sequence, key=batch.key,
                                         received_at=batch.received_at)
        return accepted.accepted, accepted.replayed


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _explain(answer: Any) -> str:
    if isinstance(answer, dict) and "error" in answer:
        return f"{answer['error']}: {answer.get('detail', '')}".rstrip(": ")
    return str(answer or "")[:200]


# -- connecting ------------------------------------------------------------------------------


def settings_for(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    return load_settings(args.config, overrides=overrides)


def daemon_url(settings: Settings) -> str:
    """http(s)://host:port of the configured daemon (a wildcard address means this
    machine; https when it has a certificate)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
        settings.server.host, settings.server.host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "http" if settings.server.tls_cert_file is None else "https"
    return f"{scheme}://{host}:{settings.server.port}"


def daemon_trust(own_certs: list[Path]) -> ssl.SSLContext:
    """The system's trust store plus the daemon's own certificate files (its self-signed
    certificate, or its chain), those of them this user can read. Blocking."""
    context = ssl.create_default_context()
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the daemon's own, CA-signed or not
    for cert in own_certs:
        with contextlib.suppress(OSError, ssl.SSLError):  # unreadable: --ca-file is the way
            context.load_verify_locations(cafile=cert)
    return context


def token_for(args: argparse.Namespace, settings: Settings) -> str | None:
    """The bearer token: --token-file, --token, else the configured one (or none)."""
    if args.token_file is not None:
        return read_token_file(args.token_file, "--token-file")
    if args.token:
        return check_token(args.token, "--token")
    return settings.token_value()


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Admin]:
    """HTTP to the daemon, or the data dir with --data-dir (refused while a daemon runs)."""
    settings = settings_for(args)
    if args.data_dir is not None and args.url is None:
        async with open_queue(settings) as queue:
            yield LocalAdmin(queue, settings.server.data_dir)
        return
    async with http_session(args, settings) as admin:
        yield admin


@contextlib.asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[DurableQueue]:
    """Open the queue of a stopped daemon, holding its data dir's lock meanwhile."""
    data_dir = settings.server.data_dir
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "does not exist"
        raise AdminError(f"data dir {data_dir} {what}")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked_data_dir(data_dir))
        except StartupError as exc:
            raise AdminError(f"{exc}; while the daemon runs, use --url") from None
        q = settings.queue
        queue = DurableQueue(data_dir, durability=q.durability, max_pending=q.max_pending,
                             ack_interval_ms=q.ack_interval_ms,
                             idempotency_ttl_hours=q.idempotency_ttl_hours,
                             max_bytes=q.max_bytes)
        await queue.open()
        try:
            yield queue
        finally:
            await queue.close()


def daemon_holds(data_dir: Path) -> bool:
    """True when a running daemon holds the data dir's lock."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def daemon_or_data_dir(args: argparse.Namespace,
                             remote: Callable[[HttpAdmin], Awaitable[_T]],
                             local: Callable[[Settings, str | None], Awaitable[_T]],
                             *, read_timeout: float = 60.0) -> _T:
    """Ask the daemon; with --data-dir (and no --url) or when no daemon answers at the
    configured address, read the data dir instead. `local` gets the settings and, on a
    fallback, why the daemon was not asked."""
    settings = settings_for(args)
    data_dir = settings.server.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise AdminError(f"data dir {data_dir} is a file, not a folder")
    if args.data_dir is not None and args.url is None:
        return await local(settings, None)
    try:
        async with http_session(args, settings, read_timeout=read_timeout) as admin:
            return await remote(admin)
    except UnreachableError as exc:
        if args.url is not None:
            raise
        return await local(settings, f"daemon not reachable ({exc})")


@contextlib.asynccontextmanager
async def http_session(args: argparse.Namespace, settings: Settings, *, url: str | None = None,
                       read_timeout: float = 60.0, cert_file: Path | None = None
                       ) -> AsyncIterator[HttpAdmin]:
    """The daemon at `url`, --url or the configured address, with the token. Over HTTPS
    its certificate must be signed by --ca-file's certificates when given; else by the
    system's trust store, or be the configured server.tls_cert_file or `cert_file` (what
    daemon.json recorded)."""
    where = url or args.url or daemon_url(settings)
    tls: ssl.SSLContext | bool = True
    given: ssl.SSLContext | None = getattr(args, "ssl_context", None)
    if given is not None:
        tls = given
    elif where.lower().startswith("https://"):
        own = [c for c in (settings.server.tls_cert_file, cert_file) if c is not None]
        tls = await asyncio.to_thread(daemon_trust, own)
    timeout = aiohttp.ClientTimeout(total=None, connect=min(10.0, read_timeout),
                                    sock_read=read_timeout)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(ssl=tls)) as session:
        yield HttpAdmin(session, where, token_for(args, settings))


def connection_options() -> argparse.ArgumentParser:
    """--url, --ca-file, --token-file, --token, --config, --data-dir and --json, for every
    command."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the data is")
    where.add_argument("--url", metavar="URL", type=http_url,
                       help="the running daemon (default: the configured host:port, "
                            "http://127.0.0.1:8765, or https:// when the config sets "
                            "server.tls_cert_file)")
    where.add_argument("--ca-file", type=ca_file, metavar="FILE", dest="ssl_context",
                       help="PEM certificate to trust for an https:// daemon: its CA, or "
                            "its self-signed certificate (default: the system's trust store "
                            "and the configured server.tls_cert_file)")
    where.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the bearer token (default: the configured token)")
    where.add_argument("--token", help="bearer token (visible in `ps`; prefer --token-file)")
    where.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML config file (address, token, data dir)")
    where.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="read the data dir's files instead of asking the daemon")
    common.add_argument("--json", action="store_true", help="print JSON")
    return common
