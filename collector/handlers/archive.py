"""The `archive` handler: every event as a JSON line in <data_dir>/archive/<UTC day>.jsonl.

It applies each job once across crashes: each event is written as one line with its
``seq`` and, on open, the last ``seq`` of the newest file is read; a job at or below it is
skipped. Files never go back in time (a job is written to its UTC day or the newest
file's, whichever is later), so the newest file's last line is the archive's
high-water mark. A dead letter put back in its old place comes with a seq below the
mark: it is looked for in the newest file and written (marked ``"revived": true``) if
it is not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from collector.files import fsync_path
from collector.handlers.base import HandlerContext
from collector.jobs import Handler, Job
from collector.logs import detached_task

log = structlog.get_logger(__name__)


ARCHIVE_DIR: Final = "archive"
_DAY_FILE: Final = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?$")
_TAIL_CHUNK: Final = 64 * 1024
_RETRYABLE_4XX: Final = frozenset({408, 429})
_SEQ_PREFIX: Final = b'{"seq":'


def day_of(timestamp: float) -> str:
    """The UTC day of a UNIX time, as the archive names its files."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date().isoformat()


class Archive:
    """Every event as a JSON line in ``<dir>/<UTC day>.jsonl``; old days gzip-compressed."""

    def __init__(self, directory: Path, *, compress_after_days: int = 1,
                 durable: bool = True) -> None:
        self._dir = directory
        self._compress_after = compress_after_days
        self._durable = durable
        # Writes run in one thread; compression in another so a big file never stalls
        # the worker. They never touch the same file: the newest day is never compressed.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-archive")
        self._packer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-archive-gz")
        self._fd: int | None = None
        self._day: str | None = None  # the newest file's day
        self._last_seq = 0
        self._first_seq: int | None = None  # the newest file's first line
        self._compressing: asyncio.Task[list[Path]] | None = None
        self._compress_wanted = False

    @property
    def directory(self) -> Path:
        """Where the day files are."""
        return self._dir

    @property
    def last_seq(self) -> int:
        """The seq of the last line written (0 for an empty archive)."""
        return self._last_seq

    async def open(self) -> None:
        """Repair a torn last line, find the last seq written, compress old days."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open)
        log.info("archive_opened", path=str(self._dir), last_seq=self._last_seq, day=self._day)
        self._compress_old()

    async def close(self) -> None:
        """Wait for a running compression, close the file, stop the threads."""
        if self._compressing is not None:
            with contextlib.suppress(Exception):
                await self._compressing
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._close_file)
        self._writer.shutdown(wait=True)
        self._packer.shutdown(wait=True)

    async def write(self, job: Job) -> None:
        """The handler: append the job's line once (fsynced when durable)."""
        loop = asyncio.get_running_loop()
        rolled = await loop.run_in_executor(self._writer, self._write, job)
        if rolled:
            self._compress_old()

    async def compressed(self) -> list[Path]:
        """Wait for the running compression, if any; the files it wrote."""
        if self._compressing is None:
            return []
        return await self._compressing

    def _compress_old(self) -> None:
        self._compress_wanted = True
        if self._compressing is None or self._compressing.done():
            self._compressing = detached_task(self._compress_passes(),
                                              name="collector-archive-compress")

    async def _compress_passes(self) -> list[Path]:
        """Compression passes until no new day file asked for one; the files written."""
        loop = asyncio.get_running_loop()
        done: list[Path] = []
        while self._compress_wanted:
            self._compress_wanted = False
            try:
                done += await loop.run_in_executor(self._packer, self._compress, self._day)
            except Exception:
                log.exception("archive_compress_failed", path=str(self._dir))
        return done

    # -- the writer thread --------------------------------------------------------------------

    def _open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._dir.glob("*.tmp"):
            leftover.unlink()
        days: set[str] = set()
        for path in self._dir.iterdir():
            found = _DAY_FILE.match(path.name)
            if found:
                days.add(found.group(1))
                if not found.group(2):
                    _finish_interrupted_compression(path)
        if not days:
            return
        newest = max(days)
        plain = self._dir / f"{newest}.jsonl"
        packed = self._dir / f"{newest}.jsonl.gz"
        self._day = newest
        if plain.exists():
            _repair_tail(plain)
            self._first_seq = _first_seq(plain)
            self._last_seq = _mark(plain)
        elif packed.exists():
            with gzip.open(packed, "rb") as fh:
                for line in fh:
                    record = orjson.loads(line)
                    if self._first_seq is None:
                        self._first_seq = int(record["seq"])
                    if not record.get("revived"):
                        self._last_seq = int(record["seq"])

    def _write(self, job: Job) -> bool:
        """Append the job's line; True when a new day file was started."""
        revived = job.seq <= self._last_seq
        if revived and not self._missing(job.seq):
            return False  # written before a crash: never twice
        day = day_of(job.received_at)
        if self._day is not None and day < self._day:
            day = self._day  # never go back to an older file (see the module's docstring)
        rolled = False
        if self._fd is None or day != self._day:
            self._close_file()
            path = self._dir / f"{day}.jsonl"
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created and self._durable:
                fsync_path(self._dir)
            rolled = self._day is not None and day != self._day
            self._day = day
        record: dict[str, Any] = {"seq": job.seq}
        if revived:
            record["revived"] = True  # right after the seq: _mark() reads it there
        record.update(received_at=job.received_at, source=job.source, sequence=job.sequence,
                      payload=job.payload)
        line = orjson.dumps(record) + b"\n"
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._durable:
            os.fdatasync(self._fd)
        if rolled or self._first_seq is None:
            self._first_seq = job.seq
        self._last_seq = max(self._last_seq, job.seq)
        return rolled

    def _missing(self, seq: int) -> bool:
        """Whether a seq below the mark is absent from the archive (a revived dead letter).

        Only the newest file is searched, from its end (a replay after a crash is found
        among the last lines). A seq older than the newest file's first line belongs to an
        older day: it is taken as written.
        """
        if self._day is None or self._first_seq is None or seq < self._first_seq:
            return False
        plain = self._dir / f"{self._day}.jsonl"
        if not plain.exists():
            return False
        for line in _lines_backward(plain):
            if _seq_of(line) == seq:
                return False
        log.info("archive_revived_job", seq=seq)
        return True

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the compression thread ----------------------------------------------------------------

    def _compress(self, newest: str | None) -> list[Path]:
        """gzip every day file older than compress_after_days and than `newest`.

        The writer only writes `newest` or later days, so no file being written is touched.
        With no newest file yet, the writer may start any day: nothing is compressed.
        """
        if newest is None:
            return []
        today = dt.datetime.now(dt.UTC).date()
        cutoff = (today - dt.timedelta(days=self._compress_after)).isoformat()
        done: list[Path] = []
        for path in sorted(self._dir.glob("*.jsonl")):
            found = _DAY_FILE.match(path.name)
            if not found or found.group(1) >= min(cutoff, newest):
                continue
            target = _gzip_file(path, durable=self._durable)
            done.append(target)
            log.info("archive_compressed", path=str(target))
        return done


def _gzip_file(path: Path, *, durable: bool) -> Path:
    """X.jsonl -> X.jsonl.gz (appended as a new gzip member if the .gz exists), atomically."""
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    with tmp.open("wb") as out:
        if target.exists():
            with target.open("rb") as old:
                shutil.copyfileobj(old, out)
        with path.open("rb") as src, gzip.GzipFile(fileobj=out, mode="wb",
                                                   filename=path.name) as packed:
            shutil.copyfileobj(src, packed)
        out.flush()
        if durable:
            os.fsync(out.fileno())
    os.replace(tmp, target)
    if durable:
        fsync_path(path.parent)
    path.unlink()
    return target


def _finish_interrupted_compression(plain: Path) -> None:
    """A crash between the .gz's rename and the .jsonl's unlink leaves both: finish it."""
    packed = plain.with_name(plain.name + ".gz")
    if not packed.exists():
        return
    data = plain.read_bytes()
    with gzip.open(packed, "rb") as fh:
        unpacked = fh.read()
    if unpacked.endswith(data):
        plain.unlink()
    else:
        log.warning("archive_both_forms", path=str(plain),
                    detail="the .jsonl is not inside the .jsonl.gz; both kept")


def _repair_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline (its job is replayed)."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            fh.seek(start)
            chunk = fh.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                break
            end = start
        else:
            fh.truncate(0)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("archive_torn_line_cut", path=str(path))


def _lines_backward(path: Path) -> Iterator[bytes]:
    """The complete lines of a file that ends with a newline, last line first."""
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        rest = b""  # the start of a line whose beginning is in an earlier chunk
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            fh.seek(start)
            chunk = fh.read(end - start) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line
            end = start
        if rest:
            yield rest


def _seq_of(line: bytes) -> int | None:
    """The seq of an archive line (``{"seq":N,...``, as this module writes it)."""
    if not line.startswith(_SEQ_PREFIX):
        return None
    digits = line[len(_SEQ_PREFIX):line.find(b",", len(_SEQ_PREFIX))]
    return int(digits) if digits.isdigit() else None


def _first_seq(path: Path) -> int | None:
    with path.open("rb") as fh:
        return _seq_of(fh.readline())


def _mark(path: Path) -> int:
    """The high-water mark of a day file: its last line not written as a revived job."""
    for line in _lines_backward(path):
        seq = _seq_of(line)
        if seq is not None and not line.startswith(b'{"seq":%d,"revived":true' % seq):
            return seq
    return 0


@asynccontextmanager
async def archive_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`archive`: every event as a JSON line in <data_dir>/archive/<UTC day>.jsonl."""
    s = context.settings
    archive = Archive(s.server.data_dir / ARCHIVE_DIR,
                      compress_after_days=s.archive.compress_after_days,
                      durable=s.queue.durability == "full")
    await archive.open()
    try:
        yield archive.write
    finally:
        await archive.close()
