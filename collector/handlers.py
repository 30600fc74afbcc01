"""Built-in handlers and the resolution of `--handler SPEC`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import structlog

from collector.config import Settings
from collector.errors import ConfigError
from collector.jobs import Handler, Job
from collector.sinks import ARCHIVE_DIR, Archive, Forwarder
from collector.stats import StatsStore

log = structlog.get_logger("collector.handler")


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler factory gets: the settings and the application's shared resources."""

    settings: Settings
    stats: StatsStore


#: A built-in handler is made by a factory that owns its resources for the daemon's life.
HandlerFactory: TypeAlias = Callable[[HandlerContext], AbstractAsyncContextManager[Handler]]


async def noop(job: Job) -> None:
    """Do nothing: acknowledges every job (benchmarks, smoke tests)."""


async def log_job(job: Job) -> None:
    """Log each job as one structured line."""
    log.info("job", source=job.source, sequence=job.sequence, attempt=job.attempt,
             payload=job.payload)


def _simple(handler: Handler) -> HandlerFactory:
    @asynccontextmanager
    async def factory(context: HandlerContext) -> AsyncIterator[Handler]:
        yield handler

    return factory


@asynccontextmanager
async def stats_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`stats`: match statistics into stats.db (the store is the application's)."""
    store = context.stats

    async def stats(job: Job) -> None:
        await store.apply(job)

    yield stats


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


@asynccontextmanager
async def forward_handler(context: HandlerContext) -> AsyncIterator[Handler]:
    """`forward`: POST each event, in order, to [forward] url."""
    f = context.settings.forward
    if f.url is None:
        raise ConfigError("forward.url: required by the forward handler")
    forwarder = Forwarder(f.url, timeout=f.timeout, token=f.token, key_prefix=f.key_prefix)
    await forwarder.open()
    try:
        yield forwarder.send
    finally:
        await forwarder.close()


def builtin_handlers() -> dict[str, HandlerFactory]:
    """Built-in handler names and their factories."""
    return {
        "noop": _simple(noop),
        "log": _simple(log_job),
        "stats": stats_handler,
        "archive": archive_handler,
        "forward": forward_handler,
    }


def resolve(spec: str, builtins: dict[str, HandlerFactory] | None = None) -> HandlerFactory:
    """Turn a built-in name or `package.module:callable` into a handler factory."""
    known = builtin_handlers() if builtins is None else builtins
    if spec in known:
        return known[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        names = ", ".join(sorted(known))
        raise ConfigError(
            f"handler {spec!r}: not a built-in ({names}) nor package.module:callable"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"handler {spec!r}: cannot import {module_name}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"handler {spec!r}: {module_name} has no attribute {attr}")
    if not callable(target):
        raise ConfigError(f"handler {spec!r}: {attr} is not callable")
    if not (inspect.iscoroutinefunction(target)
            or inspect.iscoroutinefunction(type(target).__call__)):
        raise ConfigError(f"handler {spec!r}: {attr} must be an async callable handler(job)")
    return _simple(target)
