"""What the statistics code needs of a database: the part of sqlite3's interface it uses,
and what a database shared by several nodes (PostgreSQL) adds to it.

The queries, the apply path and the sessions are written once, against
:class:`Connection`: ``sqlite3.Connection`` is one, and collector.postgres.stats
provides another for PostgreSQL (it speaks this SQL: ``?`` and ``:name`` parameters).
The SQL they use is the part both dialects share; where SQLite and PostgreSQL differ
(``IS NOT`` between two values, ``CROSS JOIN ... ON``), the PostgreSQL connection
rewrites it.

A :class:`SharedBackend` is a database that other nodes read and the elected leader
writes. The store then keeps nothing between transactions (another node may have
written), takes the applied mark with ``FOR UPDATE`` at the start of each write (two
writers take turns), asks the backend to check the lease before each commit (a stale
leader's transaction is rolled back), and tells the backend which matches changed after
it (every node's live feed listens).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from collector.errors import StartupError


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection, used by one thread (the store's)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class StatsUnavailableError(StartupError):
    """The statistics cannot be read or written now (the read routes answer 503, the
    worker retries the job). StatsDamagedError is the SQLite file's kind."""


class SharedBackend(Protocol):
    """A statistics database several nodes share (collector.postgres.stats)."""

    @property
    def label(self) -> str:
        """Where the statistics are, for logs and errors (never a password)."""

    def connect(self) -> Connection:
        """Open a connection, the schema created or migrated (in the store's thread)."""

    def before_commit(self, conn: Connection) -> None:
        """Inside the transaction, just before COMMIT: raise when this node may not write
        (it does not lead); the store then rolls back."""

    def after_commit(self, conn: Connection, changed: frozenset[int]) -> None:
        """After a commit that changed these matches: tell the other nodes."""

    def unavailable(self, exc: BaseException) -> str | None:
        """Why `exc` means the database cannot be reached now (a reason), or None when it
        is another error."""
