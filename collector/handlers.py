"""Built-in handlers and the resolution of `--handler SPEC`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

import structlog

from collector.config import Settings
from collector.errors import ConfigError
from collector.jobs import Handler, Job

log = structlog.get_logger("collector.handler")

#: A built-in handler is made by a factory that owns its resources for the daemon's life.
HandlerFactory: TypeAlias = Callable[[Settings], AbstractAsyncContextManager[Handler]]


async def noop(job: Job) -> None:
    """Do nothing: acknowledges every job (benchmarks, smoke tests)."""


async def log_job(job: Job) -> None:
    """Log each job as one structured line."""
    log.info("job", source=job.source, sequence=job.sequence, attempt=job.attempt,
             payload=job.payload)


def _simple(handler: Handler) -> HandlerFactory:
    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[Handler]:
        yield handler

    return factory


def builtin_handlers() -> dict[str, HandlerFactory]:
    """Built-in handler names and their factories."""
    return {"noop": _simple(noop), "log": _simple(log_job)}


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
