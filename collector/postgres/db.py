"""The one module that imports asyncpg: typed connections and pools, and its errors.

asyncpg ships no type information, so the few calls the package makes are declared
here as Protocols and the objects asyncpg returns are cast to them once, at creation.
Everything else in collector.postgres is checked by mypy against these declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol, cast

import asyncpg  # type: ignore[import-untyped]  # asyncpg has no stubs nor py.typed

#: Session settings of every connection the package opens. `synchronous_commit = on`:
#: a commit returns only once its WAL is flushed (the append also sets it per
#: transaction, in case a role or database default says otherwise).
SESSION_SETTINGS: Final[Mapping[str, str]] = {
    "synchronous_commit": "on",
    "application_name": "collector",
}

#: A server error (SQL, constraint, lock timeout...), raised by any call below.
PostgresError: Final[type[Exception]] = asyncpg.PostgresError
#: The connection is gone, or was used wrongly (closed, in a failed transaction...).
InterfaceError: Final[type[Exception]] = asyncpg.InterfaceError
#: Errors that mean "the database cannot be reached or the session was lost".
CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError, OSError, TimeoutError,
)


class Record(Protocol):
    """A result row: by position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Connection(Protocol):
    """The part of asyncpg.Connection the package uses (its own signatures, `timeout`
    arguments included)."""

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...  # noqa: ASYNC109

    async def fetch(self, query: str, *args: Any,
                    timeout: float | None = None) -> list[Record]: ...  # noqa: ASYNC109

    async def fetchrow(self, query: str, *args: Any,
                       timeout: float | None = None) -> Record | None: ...  # noqa: ASYNC109

    async def fetchval(self, query: str, *args: Any, column: int = 0,
                       timeout: float | None = None) -> Any: ...  # noqa: ASYNC109

    def transaction(self) -> AbstractAsyncContextManager[object]: ...

    def get_server_pid(self) -> int: ...

    def is_closed(self) -> bool: ...

    def is_in_transaction(self) -> bool: ...

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None: ...

    async def close(self, *, timeout: float | None = None) -> None: ...  # noqa: ASYNC109

    def terminate(self) -> None: ...


class Pool(Protocol):
    """The part of asyncpg.Pool the package uses."""

    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


def _settings(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**SESSION_SETTINGS, **(extra or {})}


async def connect(dsn: str, *, settings: Mapping[str, str] | None = None,
                  connect_timeout: float = 10.0) -> Connection:
    """One direct connection (not from a pool) with the package's session settings."""
    conn = await asyncpg.connect(dsn, server_settings=_settings(settings),
                                 timeout=connect_timeout)
    return cast(Connection, conn)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4,
                      settings: Mapping[str, str] | None = None,
                      connect_timeout: float = 10.0) -> Pool:
    """A pool of connections with the package's session settings."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     server_settings=_settings(settings),
                                     timeout=connect_timeout)
    return cast(Pool, pool)

