"""Operator commands: `status`, `dead list|show|retry|drop`, `queue peek`, `export`, `import`.

Each talks to the running daemon over HTTP (``--url``, default: the configured
host:port, i.e. http://127.0.0.1:8765; token from ``--token-file``, ``--token`` or the
config), or, with ``--data-dir``, works on the queue file of a stopped daemon. The data
dir's lock keeps the two apart: a running daemon makes ``--data-dir`` refuse, except
for ``status``, which only reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

import aiohttp
import orjson

from collector.admin_api import NDJSON, all_dead_seqs, dead_json, job_json
from collector.config import Settings, load_settings
from collector.datadir import LOCK_FILE, locked_data_dir
from collector.errors import StartupError
from collector.logs import configure_logging
from collector.queue import DurableQueue, inspect_file

EXIT_FAILED: Final = 1
EXIT_NOT_READY: Final = 3  # like `systemctl status` for a unit that is not active
_IMPORT_BATCH: Final = 500  # events per request or put
_IMPORT_BYTES: Final = 512 * 1024  # body bytes per request (below server.max_body_bytes)
_BUSY_RETRIES: Final = 120  # 503 answers (queue_full, shutting_down) waited out per batch


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
    async def put(self, batch: Batch) -> tuple[int, bool]: ...


@dataclass(slots=True)
class Batch:
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
        if len(self.payloads) >= _IMPORT_BATCH or self.size + len(blob) > _IMPORT_BYTES:
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
            raise UnreachableError(f"{method} {url}: {exc or type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise AdminError(f"{method} {url}: {exc}") from None
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = raw.decode(errors="replace")
        if status not in ok:
            raise AdminError(f"{method} {url}: HTTP {status} {_explain(answer)}".rstrip())
        return status, answer

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
            raise AdminError(f"GET {url}: {exc or type(exc).__name__}") from None

    async def put(self, batch: Batch) -> tuple[int, bool]:
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
                raise AdminError(f"POST {url}: {exc or type(exc).__name__}") from None
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
        chosen = await all_dead_seqs(self._queue) if seqs is None else seqs
        revived = await self._queue.retry_dead(chosen, at_tail=tail) if chosen else []
        return {"retried": len(revived), "seqs": [j.seq for j in revived],
                "at": "tail" if tail else "place"}

    async def dead_drop(self, seqs: list[int] | None) -> dict[str, Any]:
        """Deleted for good."""
        chosen = await all_dead_seqs(self._queue) if seqs is None else seqs
        return {"dropped": await self._queue.drop_dead(chosen) if chosen else 0}

    async def peek(self, limit: int) -> list[dict[str, Any]]:
        """The head of the line."""
        return [job_json(j) for j in await self._queue.peek(limit)]

    async def export(self) -> AsyncIterator[dict[str, Any] | int]:
        """The expected count, then every pending job in order."""
        yield self._queue.pending
        async for job in self._queue.pending_jobs():
            yield job_json(job)

    async def put(self, batch: Batch) -> tuple[int, bool]:
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


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    return load_settings(args.config, overrides=overrides)


def daemon_url(settings: Settings) -> str:
    """http://host:port of the configured daemon (a wildcard address means this machine)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
        settings.server.host, settings.server.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminError(f"--token-file {args.token_file}: {exc.strerror}") from None
        return token or None
    return args.token or settings.token_value()


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Admin]:
    """HTTP to the daemon, or the data dir with --data-dir (refused while a daemon runs)."""
    settings = _settings(args)
    if args.data_dir is not None and args.url is None:
        async with open_queue(settings) as queue:
            yield LocalAdmin(queue, settings.server.data_dir)
        return
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield HttpAdmin(session, args.url or daemon_url(settings), _token(args, settings))


@contextlib.asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[DurableQueue]:
    """Open the queue of a stopped daemon, holding its data dir's lock meanwhile."""
    data_dir = settings.server.data_dir
    if not data_dir.is_dir():
        raise AdminError(f"data dir {data_dir} does not exist")
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


# -- output ------------------------------------------------------------------------------------


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _json(data: Any) -> None:
    _out(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clip(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _origin(item: dict[str, Any]) -> str:
    if item.get("source") is None and item.get("sequence") is None:
        return "-"
    return f"{item.get('source') or '-'}#{item.get('sequence') if item.get('sequence') is not None else '-'}"  # noqa: E501


class Progress:
    """A progress bar on stderr when it is a terminal; a summary line in any case."""

    def __init__(self, verb: str, total: int, *, stream: IO[str] | None = None,
                 show: bool | None = None) -> None:
        self.verb = verb
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._show = self._stream.isatty() if show is None else show
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        """Count `n` more items; redraw at most 10 times a second."""
        self.done += n
        now = time.monotonic()
        if self._show and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        total = max(self.total, self.done)
        share = self.done / total if total else 1.0
        bar = "#" * int(share * 30)
        self._stream.write(f"\r{self.verb} [{bar:<30}] {share:4.0%} {self.done}/{total} jobs")
        self._stream.flush()

    def finish(self, summary: str) -> None:
        """The final bar and a summary line."""
        if self._show:
            self._draw()
            self._stream.write("\n")
        self._stream.write(summary + "\n")
        self._stream.flush()


# -- commands -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, command: Any) -> int:
    configure_logging("warning", "console", stream=sys.stderr)  # results alone on stdout
    try:
        return int(asyncio.run(command(args)))
    except AdminError as exc:
        sys.stderr.write(f"collector: error: {exc}\n")
        return EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    return _run(args, _status)


async def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.data_dir is not None and args.url is None:
        report = _file_status(settings.server.data_dir)
    else:
        try:
            async with connect(args) as admin:
                report = await admin.status()
        except UnreachableError as exc:
            if args.url is not None:
                raise
            # Not reachable at the configured address: read the file it would use.
            report = _file_status(settings.server.data_dir)
            report["not_ready"] = f"daemon not reachable ({exc})"
    if args.json:
        _json(report)
    else:
        _print_status(report)
    if report.get("problems"):
        return EXIT_FAILED
    return 0 if report.get("ready") else EXIT_NOT_READY


def _file_status(data_dir: Path) -> dict[str, Any]:
    file = inspect_file(data_dir)
    if not file.exists:
        raise AdminError(f"no queue file in {data_dir} (and no daemon answering)")
    running = daemon_holds(data_dir)
    age = None if file.oldest_pending_at is None else max(0.0, time.time() -
                                                          file.oldest_pending_at)
    return {"source": str(file.path), "running": running, "ready": False,
            "not_ready": "a daemon holds the data dir" if running else "the daemon is stopped",
            "pending": file.pending, "in_flight": 0, "dead": file.dead,
            "processed_total": file.processed_total, "last_seq": file.last_seq,
            "oldest_pending_age_s": age, "clean_shutdown": file.clean_shutdown,
            "problems": file.problems}


def _print_status(report: dict[str, Any]) -> None:
    state = "ready" if report.get("ready") else f"not ready: {report.get('not_ready')}"
    age = report.get("oldest_pending_age_s")
    rows = [
        ("from", report["source"]),
        ("state", state),
        ("pending", report["pending"] + report.get("in_flight", 0)),
        ("dead letters", report["dead"]),
        ("processed", report["processed_total"]),
        ("last seq", report["last_seq"]),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
    ]
    if "clean_shutdown" in report:
        rows.append(("clean shutdown", "yes" if report["clean_shutdown"] else "NO"))
    for problem in report.get("problems") or []:
        rows.append(("PROBLEM", problem))
    for name, value in rows:
        _out(f"{name:<15} {value}")


def _cmd_dead(args: argparse.Namespace) -> int:
    return _run(args, _dead)


def _seqs(args: argparse.Namespace) -> list[int] | None:
    if args.all == bool(args.seqs):
        raise AdminError("name the dead letters by seq, or give --all (not both)")
    return None if args.all else list(args.seqs)


async def _dead(args: argparse.Namespace) -> int:
    action = args.dead_command
    seqs = _seqs(args) if action in {"retry", "drop"} else None
    async with connect(args) as admin:
        if action == "list":
            page = await admin.dead_list(args.limit, args.offset)
            if args.json:
                _json(page)
            else:
                _print_dead(page)
        elif action == "show":
            _json(await admin.dead_show(args.seq))
        elif action == "retry":
            answer = await admin.dead_retry(seqs, tail=args.tail)
            if args.json:
                _json(answer)
            else:
                where = "at the tail" if answer["at"] == "tail" else "in their old place"
                _out(f"retried {answer['retried']} {where}: seqs {_ranges(answer['seqs'])}")
            return 0 if answer["retried"] or seqs is None else EXIT_FAILED
        else:
            answer = await admin.dead_drop(seqs)
            if args.json:
                _json(answer)
            else:
                _out(f"dropped {answer['dropped']}")
            return 0 if answer["dropped"] or seqs is None else EXIT_FAILED
    return 0


def _print_dead(page: dict[str, Any]) -> None:
    dead = page["dead"]
    _out(f"{'seq':>10}  {'failed at (UTC)':<19}  {'tries':>5}  {'source#seq':<16}  error")
    for d in dead:
        _out(f"{d['seq']:>10}  {_when(d['failed_at']):<19}  {d['attempts']:>5}  "
             f"{_clip(_origin(d), 16):<16}  {_clip(d['error'], 60)}")
    shown = page["offset"] + len(dead)
    if shown < page["total"]:
        _out(f"... {page['total'] - shown} more: --offset {shown}")
    else:
        _out(f"{page['total']} dead letter(s)")


def _ranges(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ",".join(parts)


def _cmd_peek(args: argparse.Namespace) -> int:
    return _run(args, _peek)


async def _peek(args: argparse.Namespace) -> int:
    async with connect(args) as admin:
        jobs = await admin.peek(args.limit)
    if args.json:
        _json(jobs)
        return 0
    _out(f"{'seq':>10}  {'received (UTC)':<19}  {'try':>3}  {'source#seq':<16}  payload")
    for job in jobs:
        _out(f"{job['seq']:>10}  {_when(job['received_at']):<19}  {job['attempt']:>3}  "
             f"{_clip(_origin(job), 16):<16}  {_clip(job['payload'], 80)}")
    if not jobs:
        _out("the queue is empty")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    return _run(args, _export)


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "xb") as fh:  # never overwrite an earlier export
        yield fh


async def _export(args: argparse.Namespace) -> int:
    async with connect(args) as admin:
        jobs = admin.export()
        total = await anext(jobs)
        assert isinstance(total, int)
        progress = Progress("export", total, show=args.progress)
        last = 0
        try:
            with _output(args.output) as out:
                async for job in jobs:
                    assert isinstance(job, dict)
                    out.write(orjson.dumps(job) + b"\n")
                    last = job["seq"]
                    progress.advance(1)
        except FileExistsError:
            raise AdminError(f"{args.output} exists; choose another file") from None
    progress.finish(f"exported {progress.done} pending jobs (last seq {last})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    return _run(args, _import)


def _read_jobs(path: str) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    """(line number, job, payload bytes) of an export file, checked for seq order."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    last_seq = 0
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                job = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AdminError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(job, dict) or not isinstance(job.get("payload"), dict):
                raise AdminError(f'{path}:{number}: not an exported job ({{"payload": {{…}}}})')
            seq = job.get("seq")
            if isinstance(seq, int):
                if seq <= last_seq:
                    raise AdminError(f"{path}:{number}: seq {seq} after {last_seq}: "
                                     "not in seq order")
                last_seq = seq
            yield number, job, orjson.dumps(job["payload"])
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _count_lines(path: str) -> int:
    if path == "-":
        return 0
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError as exc:
        raise AdminError(f"{path}: {exc.strerror}") from None


async def _import(args: argparse.Namespace) -> int:
    total = _count_lines(args.file)
    async with connect(args) as admin:
        by_time = isinstance(admin, LocalAdmin)  # only a put keeps received_at
        progress = Progress("import", total, show=args.progress)
        stored = replayed = 0

        async def send(batch: Batch) -> None:
            nonlocal stored, replayed
            try:
                n, again = await admin.put(batch)
            except AdminError as exc:
                raise AdminError(f"{exc} (after {progress.done} jobs; what was stored is "
                                 "skipped when the same file is imported again)") from None
            stored, replayed = stored + (0 if again else n), replayed + (n if again else 0)
            progress.advance(len(batch.payloads))

        batch = Batch()
        for _number, job, blob in _read_jobs(args.file):
            if not batch.takes(job, blob, by_time=by_time):
                await send(batch)
                batch = Batch()
            batch.add(job, blob)
        if batch.payloads:
            await send(batch)
    note = f"; {replayed} were imported before (same Idempotency-Key)" if replayed else ""
    progress.finish(f"imported {stored} jobs{note}")
    return 0


# -- the parsers ---------------------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(text)


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the queue is")
    where.add_argument("--url", metavar="URL",
                       help="the running daemon (default: the configured host:port, "
                            "http://127.0.0.1:8765)")
    where.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the bearer token (default: the configured token)")
    where.add_argument("--token", help="bearer token (visible in `ps`; prefer --token-file)")
    where.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML config file (address, token, data dir)")
    where.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="work on the queue file of a STOPPED daemon instead of HTTP")
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def register(subparsers: Any) -> None:
    """Add `status`, `dead`, `queue`, `export` and `import`."""
    common = _connection_options()

    status = subparsers.add_parser(
        "status", parents=[common], help="queue depth, dead letters, readiness",
        description="Ask the running daemon; if it does not answer (or with --data-dir), "
                    "read the queue file directly (read-only).")
    status.set_defaults(func=_cmd_status)

    dead = subparsers.add_parser("dead", help="dead letters: list, show, retry, drop")
    actions = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="dead letters in seq order")
    listing.add_argument("--limit", type=_positive, default=50, help="rows (default 50)")
    listing.add_argument("--offset", type=_count, default=0, help="skip this many")
    show = actions.add_parser("show", parents=[common], help="one dead letter, in full")
    show.add_argument("seq", type=_positive)
    retry = actions.add_parser(
        "retry", parents=[common], help="put dead letters back in line",
        description="By default each job goes back in its old place (its old seq: it runs "
                    "next, before every pending job); with --tail it gets a new seq after "
                    "the newest job. Several seqs in one command keep their order.")
    retry.add_argument("seqs", nargs="*", type=_positive, metavar="SEQ")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.add_argument("--tail", action="store_true", help="at the tail, with new seqs")
    drop = actions.add_parser("drop", parents=[common], help="delete dead letters for good")
    drop.add_argument("seqs", nargs="*", type=_positive, metavar="SEQ")
    drop.add_argument("--all", action="store_true", help="every dead letter")
    dead.set_defaults(func=_cmd_dead)

    queue = subparsers.add_parser("queue", help="look at the line of pending jobs")
    queue_actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    peek = queue_actions.add_parser("peek", parents=[common],
                                    help="the next jobs in line, the one in flight first")
    peek.add_argument("--limit", type=_positive, default=10, help="jobs (default 10)")
    peek.set_defaults(func=_cmd_peek)

    export = subparsers.add_parser(
        "export", parents=[common], help="pending jobs as JSON lines, in seq order",
        description="From a running daemon it is a copy (the worker carries on); to move "
                    "jobs, stop the daemon and export with --data-dir.")
    export.add_argument("-o", "--output", default="-", metavar="FILE",
                        help="write here (default: stdout); never overwrites a file")
    export.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when it is a terminal)")
    export.set_defaults(func=_cmd_export)

    imp = subparsers.add_parser(
        "import", parents=[common], help="add exported jobs at the tail, in order",
        description="Through the daemon's POST /v1/events (or straight into a stopped "
                    "daemon's queue with --data-dir), in file order, with X-Source/"
                    "X-Sequence kept and an Idempotency-Key per batch: importing the same "
                    "file twice stores its jobs once. Jobs get new seqs.")
    imp.add_argument("file", metavar="FILE", help="an export (JSON lines), or - for stdin")
    imp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when it is a terminal)")
    imp.set_defaults(func=_cmd_import)
