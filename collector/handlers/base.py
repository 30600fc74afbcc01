"""What every handler factory gets and gives: the context in, an async context manager
of a handler out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias

from collector.config import Settings
from collector.jobs import Handler
from collector.stats.store import StatsStore


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler factory gets: the settings and the application's shared resources."""

    settings: Settings
    stats: StatsStore


#: A built-in handler is made by a factory that owns its resources for the daemon's life.
HandlerFactory: TypeAlias = Callable[[HandlerContext], AbstractAsyncContextManager[Handler]]


def simple(handler: Handler) -> HandlerFactory:
    @asynccontextmanager
    async def factory(context: HandlerContext) -> AsyncIterator[Handler]:
        yield handler

    return factory
