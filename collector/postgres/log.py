"""The shared ordered log: every node appends, the elected leader reads and settles.

The order, and why it is made this way
--------------------------------------
Concurrent transactions commit in another order than the one in which they took their
sequence numbers. A reader that takes ``seq > last`` then skips a row whose transaction
committed after a higher seq was already read: measured with 4 writers, such a reader
missed 4.5 % of the rows (the figures, and where they come from, are in
docs/scale-out.md; tests/unit/postgres/test_order.py shows it as its control). Two
techniques keep every row:

* **Serialise the append** (chosen). Each append transaction first takes
  ``pg_advisory_xact_lock(LOCK_SPACE, APPEND_LOCK)``, then its seqs, inserts, commits.
  PostgreSQL makes a transaction visible before it releases its locks, so the next
  append takes its seqs only after every lower seq is committed and visible: seq order
  is commit order, a snapshot that sees seq N sees every seq below it, and the plain
  ``seq > last ORDER BY seq`` read cannot skip. The ``seq`` of the ``202`` stays the
  order in which the worker applies the events, across all nodes, as the contract
  says. The lock is held through the commit's WAL flush, which caps small transactions
  near 6k commits/s whatever the number of writers; but each node group-commits many
  requests per transaction, and with 100-event transactions 4 writers measured 180k
  events/s under the lock against 270-310k without it, 240k with the insert inside one
  plpgsql call (which is what ``log_append`` in collector.postgres.schema does: the
  lock is held for one statement and the commit).
* Read below the horizon on ``(xid, seq)`` (not chosen): no writer waits, but the apply
  order becomes xid order, so the ``seq`` in the ``202`` would no longer say where an
  event stands in the order the handlers see, and one long-open transaction stalls all
  reading. It breaks the contract for throughput the group commit makes unnecessary.

The reader must read the primary (the server the appends commit on).

The same lock makes Idempotency-Keys exact across nodes: the key is looked up after the
lock is taken, so of two appends of one key at the same instant (two nodes), the second
finds the first's committed row and answers its seqs, storing nothing. The unique index
is a backstop: without the lock, the second append would fail with KeyConflictError. A
repeated key answers ``replayed=True`` with the first answer, like ``DurableQueue``.

Settling is fenced: the apply mark (``log_state.applied_seq``), failed attempts and dead
letters are written only in a transaction that first locks the state row *with the
caller's epoch*; a leader whose epoch is no longer current (another node took over and
incremented it, see collector.postgres.leader) gets FencedError and nothing is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Final

import orjson

from collector.jobs import Job
from collector.postgres.db import Connection, Pool, PostgresError, Record
from collector.postgres.schema import KEY_CONFLICT_STATE
from collector.queue.rows import Accepted, DeadJob


class FencedError(Exception):
    """The caller's epoch is not the current one: it lost leadership; nothing was written."""


class KeyConflictError(Exception):
    """An Idempotency-Key was stored by a concurrent append (only possible without the
    append lock); the append was rolled back."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request's events on their way into the log (all or none)."""

    events: Sequence[bytes]  # each event's JSON text
    received_at: float
    source: str | None = None
    sequence: int | None = None  # X-Sequence of the first event; the next ones follow
    key: str | None = None  # Idempotency-Key


@dataclass(frozen=True, slots=True)
class LogState:
    """The shared state row: the apply mark, the count of done jobs, the leader's term."""

    applied_seq: int
    processed_total: int
    epoch: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class LogNumbers:
    """The log's figures at one instant (SharedLog.numbers)."""

    stored: int  # jobs in the log not yet done (revived ones included)
    dead: int
    processed_total: int
    applied_seq: int
    last_seq: int
    oldest_received_at: float | None


def key_digest(key: str) -> bytes:
    """What the log stores of an Idempotency-Key: its SHA-256, so that a key of any
    length or content fits the unique index (a b-tree entry holds at most 2,704 bytes:
    one client's 8 kB header would otherwise fail a whole group commit)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


# The leader's reads; _job takes their first six columns by position.
_JOBS_AFTER: Final = ("SELECT seq, payload, received_at, source, sequence, attempts FROM log "
                      "WHERE seq > $1 AND NOT revived ORDER BY seq LIMIT $2")
_REVIVED_JOBS: Final = ("SELECT seq, payload, received_at, source, sequence, attempts FROM log "
                        "WHERE revived AND seq > $2 ORDER BY seq LIMIT $1")
_NEXT_JOBS: Final = (
    "(SELECT seq, payload, received_at, source, sequence, attempts, true FROM log "
    "WHERE revived ORDER BY seq LIMIT $2) UNION ALL "
    "(SELECT seq, payload, received_at, source, sequence, attempts, false FROM log "
    "WHERE seq > $1 AND NOT revived ORDER BY seq LIMIT $2)")


def _job(row: Record) -> Job:
    # By position, not by name: the leader makes one per event (a name lookup in a
    # Record costs about as much as the Job itself).
    return Job(row[0], orjson.loads(row[1]), row[2], row[5] + 1, row[3], row[4])


def _dead(row: Record) -> DeadJob:
    return DeadJob(seq=row["seq"], payload=orjson.loads(row["payload"]),
                      received_at=row["received_at"], source=row["source"],
                      sequence=row["sequence"], attempts=row["attempts"],
                      error=row["error"], failed_at=row["failed_at"])


class SharedLog:
    """The log shared by every node of one database (schema migrated beforehand)."""

    def __init__(self, pool: Pool, *, idempotency_ttl_s: float = 48 * 3600.0,
                 serialise: bool = True) -> None:
        self._pool = pool
        self._ttl_s = idempotency_ttl_s
        # False only for the tests' control run: without the lock, seq order is not
        # commit order and a reader skips rows.
        self._serialise = serialise

    # -- appending (any node) -----------------------------------------------------------

    async def append(self, requests: Sequence[Request]) -> list[Accepted]:
        """Store the events of `requests` in one transaction (a node's group commit):
        all or none, committed with `synchronous_commit = on` before this returns.
        Returns one answer per request, in order."""
        if any(not r.events for r in requests):
            raise ValueError("a request without events")
        if not requests:
            return []
        async with self._pool.acquire() as conn:  # one statement: its own transaction
            return await self._append(conn, requests)

    async def _append(self, conn: Connection, requests: Sequence[Request],
                      revive: Sequence[int] = ()) -> list[Accepted]:
        """The append: one call of the schema's `log_append` (lock, keys, seqs, rows, in
        one round trip: the lock is held for as short as possible); `revive`: dead
        letters whose events these are (deleted in the caller's transaction)."""
        # The events' texts as one bytea and where each ends in it (see LOG_APPEND).
        events = [event for r in requests for event in r.events]
        try:
            rows = await conn.fetch(
                "SELECT r_first, r_last, r_accepted, r_replayed FROM log_append("
                "$1, $2, $3, $4, $5, $6, $7, $8, $9) ORDER BY r_ord",
                self._serialise, [len(r.events) for r in requests], b"".join(events),
                list(itertools.accumulate(map(len, events))),
                [r.received_at for r in requests], [r.source for r in requests],
                [r.sequence for r in requests],
                [None if r.key is None else key_digest(r.key) for r in requests],
                self._ttl_s)
        except PostgresError as exc:
            if getattr(exc, "sqlstate", None) == KEY_CONFLICT_STATE:
                raise KeyConflictError(str(exc)) from None
            raise
        if revive:
            await conn.execute("DELETE FROM log_dead WHERE seq = ANY($1::bigint[])", list(revive))
        return [Accepted(r["r_accepted"], r["r_first"], r["r_last"], r["r_replayed"])
                for r in rows]

    # -- reading (the leader) -------------------------------------------------------------

    async def jobs_after(self, after: int, limit: int) -> list[Job]:
        """Regular jobs with seq > `after`, in seq order (at most `limit`).

        Cannot skip a row committed late: appends are serialised, so a snapshot that
        holds seq N holds every seq below N (see the module docstring)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_JOBS_AFTER, after, limit)
        return [_job(r) for r in rows]

    async def revived_jobs(self, limit: int, *, after: int = 0) -> list[Job]:
        """Dead letters put back in their old place, in seq order (seq > `after`): they
        run first."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_REVIVED_JOBS, limit, after)
        return [_job(r) for r in rows]

    async def next_jobs(self, after: int, limit: int, *, handed_out: Set[int] = frozenset()
                        ) -> tuple[list[Job], bool]:
        """What the leader runs next, and whether it is revived dead letters: the revived
        ones not in `handed_out` if there are any (at most `limit`), else the regular jobs
        with seq > `after` (at most `limit`), in seq order. `revived_jobs` and
        `jobs_after` in one statement: the leader asks every few milliseconds, and this is
        one round trip and one use of a pooled connection, not two."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_NEXT_JOBS, after, limit)
        revived = [_job(r) for r in rows if r[6] and r[0] not in handed_out]
        if revived:
            return revived, True
        return [_job(r) for r in rows if not r[6]], False

    # -- settling (the leader, fenced on its epoch) ---------------------------------------

    async def _fence(self, conn: Connection, epoch: int) -> int:
        """Lock the state row if `epoch` is current; return the apply mark. A new
        leader's epoch increment waits for this transaction, or has already made it fail."""
        mark = await conn.fetchval(
            "SELECT applied_seq FROM log_state WHERE id = 1 AND epoch = $1 FOR UPDATE", epoch)
        if mark is None:
            raise FencedError(f"epoch {epoch} is not the current one: leadership was lost")
        return int(mark)

    async def _advance(self, conn: Connection, mark: int, upto: int | None,
                       processed: int) -> int:
        """Move the apply mark to `upto` (every regular job up to it is done) and count
        `processed` acknowledgements; done rows are deleted. Returns the new mark."""
        new = mark if upto is None or upto <= mark else upto
        if new > mark or processed:
            await conn.execute(
                "UPDATE log_state SET applied_seq = $1, "
                "processed_total = processed_total + $2 WHERE id = 1", new, processed)
        if new > mark:
            await conn.execute(
                "DELETE FROM log WHERE seq > $1 AND seq <= $2 AND NOT revived", mark, new)
        return new

    async def ack(self, epoch: int, *, upto: int | None = None, revived: Sequence[int] = (),
                  processed: int = 0) -> int:
        """Acknowledge: regular jobs up to `upto` and the revived jobs `revived` are done,
        `processed` of them handled (the others were dead-lettered). Fenced on `epoch`;
        returns the apply mark."""
        async with self._pool.acquire() as conn, conn.transaction():
            mark = await self._advance(conn, await self._fence(conn, epoch), upto, processed)
            if revived:
                await conn.execute("DELETE FROM log WHERE seq = ANY($1::bigint[]) AND revived",
                                   list(revived))
            return mark

    async def record_attempt(self, epoch: int, job: Job, *, upto: int | None = None,
                             processed: int = 0) -> None:
        """`job` failed `job.attempt` times and keeps its place; acknowledgements up to
        `upto` go in the same transaction. Fenced on `epoch`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._advance(conn, await self._fence(conn, epoch), upto, processed)
            await conn.execute("UPDATE log SET attempts = $2 WHERE seq = $1", job.seq,
                               job.attempt)

    async def bury(self, epoch: int, job: Job, error: str, *, processed: int = 0) -> None:
        """Move `job` to the dead letters with `error`; the line moves on past it (every
        regular job before it is done, `processed` of them handled). Fenced on `epoch`."""
        async with self._pool.acquire() as conn, conn.transaction():
            mark = await self._fence(conn, epoch)
            row = await conn.fetchrow(
                "DELETE FROM log WHERE seq = $1 RETURNING payload, received_at, source, "
                "sequence, revived", job.seq)
            if row is None:
                raise LookupError(f"job {job.seq} is not in the log")
            await conn.execute(
                "INSERT INTO log_dead (seq, payload, received_at, source, sequence, attempts, "
                "error, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, log_now()) "
                "ON CONFLICT (seq) DO UPDATE SET attempts = EXCLUDED.attempts, "
                "error = EXCLUDED.error, failed_at = EXCLUDED.failed_at",
                job.seq, row["payload"], row["received_at"], row["source"], row["sequence"],
                job.attempt, error)
            await self._advance(conn, mark, None if row["revived"] else job.seq, processed)

    # -- dead letters (any node) ------------------------------------------------------------

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadJob]:
        """Dead letters in seq order."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, payload, received_at, source, sequence, attempts, error, "
                "failed_at FROM log_dead ORDER BY seq LIMIT $1 OFFSET $2", limit, offset)
        return [_dead(r) for r in rows]

    async def dead_letter(self, seq: int) -> DeadJob | None:
        """One dead letter by seq, or None."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT seq, payload, received_at, source, sequence, attempts, error, "
                "failed_at FROM log_dead WHERE seq = $1", seq)
        return None if row is None else _dead(row)

    async def dead_count(self) -> int:
        """How many dead letters there are."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM log_dead"))

    async def retry_dead(self, seqs: Sequence[int], *, at_tail: bool = False) -> list[Job]:
        """Put dead letters back in line: in their old place (under their seq, before
        every pending job) or at the tail (new seqs, through the serialised append).
        Returns the jobs put back, in their new order."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, payload, received_at, source, sequence, attempts, error, "
                "failed_at FROM log_dead WHERE seq = ANY($1::bigint[]) ORDER BY seq "
                "FOR UPDATE", sorted(set(seqs)))
            if not rows:
                return []
            if not at_tail:
                await conn.execute(
                    "WITH d AS (DELETE FROM log_dead WHERE seq = ANY($1::bigint[]) "
                    "RETURNING seq, payload, received_at, source, sequence) "
                    "INSERT INTO log (seq, payload, received_at, source, sequence, revived) "
                    "SELECT seq, payload, received_at, source, sequence, true FROM d",
                    [r["seq"] for r in rows])
                return [Job(r["seq"], orjson.loads(r["payload"]), r["received_at"], 1,
                            r["source"], r["sequence"]) for r in rows]
            answers = await self._append(
                conn, [Request([r["payload"]], r["received_at"], r["source"], r["sequence"])
                       for r in rows], revive=[r["seq"] for r in rows])
            return [Job(a.first_seq, orjson.loads(r["payload"]), r["received_at"], 1,
                        r["source"], r["sequence"]) for a, r in zip(answers, rows, strict=True)]

    async def drop_dead(self, seqs: Sequence[int]) -> int:
        """Delete dead letters for good; returns how many there were."""
        async with self._pool.acquire() as conn:
            status = await conn.execute("DELETE FROM log_dead WHERE seq = ANY($1::bigint[])",
                                        sorted(set(seqs)))
        return int(status.rpartition(" ")[2])

    # -- numbers and upkeep (any node) ----------------------------------------------------

    async def state(self) -> LogState:
        """The apply mark, processed total and the leader's term."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT applied_seq, processed_total, epoch, leader "
                                      "FROM log_state WHERE id = 1")
        assert row is not None, "log_state has its row from the first migration on"
        return LogState(row["applied_seq"], row["processed_total"], row["epoch"],
                        row["leader"])

    async def known_key(self, key: str) -> Accepted | None:
        """The first answer of a retained Idempotency-Key (replayed), or None."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT first_seq, last_seq, accepted FROM log_keys WHERE digest = $1 "
                "AND created_at > log_now() - $2", key_digest(key), self._ttl_s)
        return None if row is None else Accepted(row["accepted"], row["first_seq"],
                                                  row["last_seq"], replayed=True)

    async def numbers(self) -> LogNumbers:
        """Every figure of /v1/queue in one round trip (counts the rows: not per request)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM log) AS stored, "
                "(SELECT count(*) FROM log_dead) AS dead, s.processed_total, s.applied_seq, "
                "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM log_seq) AS last, "
                "(SELECT min(received_at) FROM ((SELECT received_at FROM log WHERE revived) "
                "UNION ALL (SELECT received_at FROM log WHERE seq > s.applied_seq "
                "ORDER BY seq LIMIT 1)) AS heads) AS oldest "
                "FROM log_state AS s WHERE s.id = 1")
        assert row is not None, "log_state has its row from the first migration on"
        oldest = row["oldest"]
        return LogNumbers(stored=int(row["stored"]), dead=int(row["dead"]),
                          processed_total=int(row["processed_total"]),
                          applied_seq=int(row["applied_seq"]), last_seq=int(row["last"]),
                          oldest_received_at=None if oldest is None else float(oldest))

    async def pending(self) -> int:
        """Jobs stored and not yet done, exactly (counts the rows: for /v1/queue)."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM log"))

    async def backlog(self) -> int:
        """Jobs waiting, as an upper bound that costs two index reads (for `503
        queue_full`): the seqs handed out past the apply mark (a rolled-back append's
        seqs count until the mark passes them) plus the revived dead letters."""
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM log_seq)"
                " - applied_seq + (SELECT count(*) FROM log WHERE revived) "
                "FROM log_state WHERE id = 1")
        return max(0, int(value))

    async def last_seq(self) -> int:
        """The highest seq handed out (0 when none); may belong to an append in progress."""
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM log_seq"))

    async def oldest_received_at(self) -> float | None:
        """When the oldest job still to do was received (None when there is none)."""
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT min(received_at) FROM ((SELECT received_at FROM log WHERE revived) "
                "UNION ALL (SELECT received_at FROM log WHERE seq > (SELECT applied_seq FROM "
                "log_state WHERE id = 1) ORDER BY seq LIMIT 1)) AS heads")
        return None if value is None else float(value)

    async def purge_keys(self) -> int:
        """Forget Idempotency-Keys older than the retention; returns how many."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM log_keys WHERE created_at <= log_now() - $1", self._ttl_s)
        return int(status.rpartition(" ")[2])


class LogReader:
    """The leader's reader: jobs after the committed apply mark, revived dead letters
    first, then regular jobs in seq order, each handed out once."""

    def __init__(self, log: SharedLog, *, after: int, page: int = 1000,
                 poll_s: float = 0.005) -> None:
        self._log = log
        self.cursor = after  # the highest regular seq handed out
        self._page = page
        self._poll_s = poll_s
        self._revived_out: set[int] = set()  # revived jobs handed out, not yet settled

    async def take(self) -> list[Job]:
        """The next jobs, without waiting ([] when there is none)."""
        jobs, revived = await self._log.next_jobs(self.cursor, self._page,
                                                  handed_out=self._revived_out)
        if revived:
            self._revived_out.update(j.seq for j in jobs)
            return jobs
        if jobs:
            self.cursor = jobs[-1].seq
        return jobs

    def is_revived(self, seq: int) -> bool:
        """Whether `seq` was handed out as a revived dead letter (not yet settled)."""
        return seq in self._revived_out

    def settled(self, job: Job) -> None:
        """`job` (revived) is acknowledged or buried: forget that it was handed out."""
        self._revived_out.discard(job.seq)

    async def wait(self) -> list[Job]:
        """The next jobs, polling until there are some (appends do not NOTIFY: a NOTIFY
        in the append transaction would serialise every commit of the database)."""
        while True:
            jobs = await self.take()
            if jobs:
                return jobs
            await asyncio.sleep(self._poll_s)
