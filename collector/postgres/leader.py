"""Leader election: one node at a time applies the log.

Every node is a `Candidate`. Leadership is the session-level advisory lock
``(LOCK_SPACE, LEADER_LOCK)``, held by a dedicated direct connection (never a pooled
one: a transaction-mode pooler would hand the session, and the lock, to someone else).
The server releases it when that session ends: a clean stop, a killed backend, or a
node that vanished, which the server sees through the TCP keepalives set on the
session (without them a dead host's half-open connection holds the lock for hours).

Taking the lock is not enough to be safe: the old leader may not know yet that it lost
it (a network partition, a long pause) and may still try to settle jobs. So a new
leader, in the transaction it starts with, increments `log_state.epoch` and reads the
committed apply mark it resumes from; every settling write of the log is fenced on the
writer's epoch (collector.postgres.log), and a stale leader's is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from collector.postgres import db
from collector.postgres.schema import LEADER_LOCK, LOCK_SPACE

log = structlog.get_logger(__name__)

#: Server-side TCP settings of the leader's session. Keepalives: a vanished node's idle
#: session ends, and its lock is released, after about idle + interval * count = 25 s.
#: Keepalives are sent only on an idle connection; tcp_user_timeout (milliseconds,
#: PostgreSQL 12 on) ends a session whose sent data stays unacknowledged for 30 s, where
#: the kernel would otherwise retransmit for about 15 minutes holding the lock.
KEEPALIVE_SETTINGS: Final[Mapping[str, str]] = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


@dataclass(frozen=True, slots=True)
class Term:
    """A leadership: the fencing epoch and the committed apply mark to resume after."""

    epoch: int
    applied_seq: int
    node: str


class Candidate:
    """One node's candidacy, on its own direct connection."""

    def __init__(self, dsn: str, node: str, *, poll_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self.node = node
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._conn: db.Connection | None = None
        self.term: Term | None = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the candidate's session (None when not connected)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def _connection(self) -> db.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await db.connect(self._dsn, settings=KEEPALIVE_SETTINGS,
                                          connect_timeout=self._timeout_s)
        return self._conn

    def _drop(self) -> None:
        """Forget the session (and with it the lock, if the server still had it)."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self.term = None

    async def try_lead(self) -> Term | None:
        """Take the leadership if nobody holds it: the lock, then a new epoch. None when
        another session holds the lock."""
        if self.term is not None:
            return self.term
        try:
            conn = await self._connection()
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE,
                                      LEADER_LOCK, timeout=self._timeout_s)
            if not got:
                return None
            async with conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE log_state SET epoch = epoch + 1, leader = $1, "
                    "leader_since = extract(epoch FROM clock_timestamp()) WHERE id = 1 "
                    "RETURNING epoch, applied_seq", self.node, timeout=self._timeout_s)
        except BaseException:
            self._drop()  # the lock, if taken, goes with the session
            raise
        assert row is not None, "log_state has its row from the first migration on"
        self.term = Term(row["epoch"], row["applied_seq"], self.node)
        log.info("leader_elected", node=self.node, epoch=self.term.epoch,
                 resume_after=self.term.applied_seq)
        return self.term

    async def lead(self) -> Term:
        """Wait until this candidate leads (connection failures are retried)."""
        while True:
            try:
                term = await self.try_lead()
            except db.CONNECTION_ERRORS as exc:
                log.warning("leader_candidate_unreachable", node=self.node, error=str(exc))
                term = None
            if term is not None:
                return term
            await asyncio.sleep(self._poll_s)

    async def still_leading(self) -> bool:
        """Whether this candidate still holds the lock and its epoch is the current one
        (a heartbeat, with a timeout). On any doubt the term is dropped: False."""
        if self.term is None or self._conn is None:
            return False
        try:
            ok = await self._conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted AND classid = $1 AND objid = $2 "
                "AND objsubid = 2) AND (SELECT epoch FROM log_state WHERE id = 1) = $3",
                LOCK_SPACE, LEADER_LOCK, self.term.epoch, timeout=self._timeout_s)
        except (*db.CONNECTION_ERRORS, db.PostgresError) as exc:
            log.warning("leader_lost", node=self.node, epoch=self.term.epoch, error=str(exc))
            self._drop()
            return False
        if not ok:
            log.warning("leader_lost", node=self.node, epoch=self.term.epoch)
            self._drop()
        return bool(ok)

    async def resign(self) -> None:
        """Give the leadership up (the next candidate takes over at its next poll)."""
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(*db.CONNECTION_ERRORS, db.PostgresError):
                await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE,
                                          LEADER_LOCK, timeout=self._timeout_s)
        if self.term is not None:
            log.info("leader_resigned", node=self.node, epoch=self.term.epoch)
        self.term = None

    async def close(self) -> None:
        """Resign and close the connection."""
        await self.resign()
        if self._conn is not None:
            with contextlib.suppress(*db.CONNECTION_ERRORS):
                await self._conn.close(timeout=self._timeout_s)
            self._conn = None

