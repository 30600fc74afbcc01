"""`collector recover`: move a damaged queue file aside and salvage every readable job."""

from __future__ import annotations

import bisect
import contextlib
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from collector.errors import (
    StorageError,
)
from collector.files import aside_name, fsync_path
from collector.queue.check import bad_dead_row, bad_job_row, connect_read_only, give_back
from collector.queue.rows import DEAD_COLUMNS, JOB_COLUMNS, JOBS_TABLE, KEY_COLUMNS, QUEUE_FILE
from collector.queue.table import JobTable, transaction

_SEQ_MARGIN_WHEN_UNKNOWN: Final = 1_000_000_000
_SALVAGE_PROBES: Final = 20_000  # reads per table before the rest is given up as unreadable
_ROWID_MIN: Final = -(2**63)
_ROWID_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class RecoverReport:
    """What `collector recover` did (or, with dry_run, would do)."""

    damaged_moved_to: Path
    jobs_salvaged: int  # jobs still to do, in the salvaged rows
    dead_salvaged: int
    unreadable_ranges: list[tuple[int, int]]  # seqs whose jobs could not be read
    next_seq: int
    keys_salvaged: int = 0  # Idempotency-Keys kept
    rows_salvaged: int = 0
    dry_run: bool = False


class NothingToRecoverError(StorageError):
    """There is no queue file in the data dir."""

def recover_file(data_dir: Path, *, dry_run: bool = False) -> RecoverReport:
    """Move a damaged queue file aside and salvage every readable job, in order.

    The damaged file (and its -wal/-shm) is renamed, never deleted, and never written:
    it is read through a read-only connection. Jobs keep their seq (and their failed
    attempts); dead letters and Idempotency-Keys are kept too. If the highest seq ever
    used cannot be read, new seqs start far above the salvaged ones, so that no handler
    mistakes a new job for one it already applied.

    The new file is built completely under a temporary directory first; only then are
    the damaged files renamed aside and the new one renamed into place, so a crash
    during the (possibly long) salvage leaves the data dir as it was. The caller holds
    the data dir's lock, so no daemon starts in between. With `dry_run`, nothing is
    written or moved: the report says what would be salvaged.
    """
    path = data_dir / QUEUE_FILE
    if not path.exists():
        raise NothingToRecoverError(f"no queue file {path}: nothing to recover")
    before = {s: Path(f"{path}{s}").exists() for s in ("-wal", "-shm")}
    old = _open_for_salvage(path)
    try:
        jobs, bad_keys = _salvage(old, JOBS_TABLE, JOB_COLUMNS, bad_job_row)
        dead, _ = _salvage(old, "dead_letters", DEAD_COLUMNS, bad_dead_row)
        keys, _ = _salvage(old, "idempotency_keys", KEY_COLUMNS, _bad_key_row)
        known_last = _read_or_none(
            old, "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'jobs_v1'")
        processed = _read_or_none(
            old, "SELECT value FROM meta WHERE key = 'processed_total'")
    finally:
        if old is not None:
            old.close()
        give_back(path, [s for s, existed in before.items() if not existed])
    highest = max([r[0] for r in jobs] + [r[0] for r in dead] + [0])
    last = highest + _SEQ_MARGIN_WHEN_UNKNOWN if known_last is None else max(known_last, highest)
    report = RecoverReport(
        damaged_moved_to=aside_name(path, "damaged"), jobs_salvaged=sum(r[0] - r[4] for r in jobs),
        dead_salvaged=len(dead), unreadable_ranges=_lost_seqs(jobs, bad_keys, last),
        next_seq=last + 1, keys_salvaged=len(keys), rows_salvaged=len(jobs), dry_run=dry_run,
    )
    if dry_run:
        return report
    build = Path(tempfile.mkdtemp(prefix=".recover-", dir=data_dir))
    table = JobTable(build, durability="full")
    conn: sqlite3.Connection = table._conn
    with transaction(conn):
        conn.executemany(
            f"INSERT INTO {JOBS_TABLE} ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", jobs)
        conn.executemany(f"INSERT INTO dead_letters ({DEAD_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead)
        conn.executemany(f"INSERT INTO idempotency_keys ({KEY_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?)", keys)
        # sqlite_sequence has no unique name: update the row the inserts made, or add one.
        if not conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs_v1'", (last,)
        ).rowcount:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs_v1', ?)", (last,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'processed_total'",
                     (processed or 0,))
    table.checkpoint()
    table.close()  # marks a clean stop
    fsync_path(build / QUEUE_FILE)
    aside = report.damaged_moved_to
    # The WAL first: a fresh queue.db next to the old WAL would read the old frames.
    for suffix in ("-wal", "-shm", ""):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    (build / QUEUE_FILE).rename(path)
    with contextlib.suppress(OSError):
        shutil.rmtree(build)
    fsync_path(data_dir)
    return report


def _open_for_salvage(path: Path) -> sqlite3.Connection | None:
    """A read-only connection that reads what it can, or None if nothing can be read."""
    try:
        conn = connect_read_only(path)
    except sqlite3.Error:
        return None
    try:
        # A file shorter than its header says (truncated) is refused as a whole unless
        # the schema checks are relaxed; on a read-only connection this writes nothing.
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()  # not a database at all, or its schema is gone
        return None
    return conn


def _read_or_none(conn: sqlite3.Connection | None, sql: str) -> int | None:
    """One integer from `sql`, or None when it cannot be read."""
    if conn is None:
        return None
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row and isinstance(row[0], int) else None


def _bad_key_row(row: tuple[Any, ...]) -> str:
    key, first, last, accepted, created = row
    ok = (isinstance(key, str) and isinstance(first, int) and isinstance(last, int)
          and isinstance(accepted, int) and isinstance(created, int | float))
    return "" if ok else "bad column types"


def _salvage(
    conn: sqlite3.Connection | None, table: str, columns: str,
    bad: Callable[[tuple[Any, ...]], str],
) -> tuple[list[tuple[Any, ...]], list[tuple[int, int]]]:
    """Every readable, decodable row of `table` in rowid order, and the rowid ranges
    that could not be read (or decoded).

    One ordered read does it when the table is sound. When a read fails, the rest of its
    range is split in halves and each half read again, breadth first, so the readable
    rows around a damaged page are found with a number of reads that grows with the
    damage, not with the size of the file, and never beyond _SALVAGE_PROBES.
    """
    if conn is None:
        return [], [(_ROWID_MIN, _ROWID_MAX)]
    sql = (f"SELECT rowid, {columns} FROM {table} "
           "WHERE rowid BETWEEN ? AND ? ORDER BY rowid")
    found: dict[int, tuple[Any, ...]] = {}  # rowid -> row (a range may be read twice)
    unreadable: list[tuple[int, int]] = []
    todo: deque[tuple[int, int]] = deque([(_ROWID_MIN, _ROWID_MAX)])
    probes = 0
    while todo:
        low, high = todo.popleft()
        if probes >= _SALVAGE_PROBES:
            unreadable.append((low, high))
            continue
        probes += 1
        try:
            for row in conn.execute(sql, (low, high)):
                low = row[0] + 1
                if bad(row[1:]):
                    unreadable.append((row[0], row[0]))
                else:
                    found[row[0]] = row[1:]
            continue
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return [], []  # never created: nothing lost
        if low > high:
            continue
        if low == high:
            unreadable.append((low, low))
            continue
        middle = low + (high - low) // 2
        todo.extend([(low, middle), (middle + 1, high)])
    merged: list[tuple[int, int]] = []
    for a, b in sorted(unreadable):
        if merged and merged[-1][1] + 1 >= a:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return [found[rowid] for rowid in sorted(found)], merged


def _lost_seqs(jobs: list[tuple[Any, ...]], bad_keys: list[tuple[int, int]], last: int
               ) -> list[tuple[int, int]]:
    """The seqs whose jobs may sit in the unreadable rows (keys are rows' last seqs)."""
    lost: list[tuple[int, int]] = []
    keys = [int(r[0]) for r in jobs]
    firsts = [int(r[1]) for r in jobs]
    for a, b in bad_keys:
        before = bisect.bisect_left(keys, a)
        after = bisect.bisect_right(keys, b)
        low = keys[before - 1] + 1 if before else 1
        high = firsts[after] - 1 if after < len(keys) else last
        low, high = max(low, 1), min(high, b, last)
        if low <= high and (not lost or lost[-1][1] < low):
            lost.append((low, high))
    return lost
