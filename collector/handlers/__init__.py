"""Handlers: the built-in ones by name, and the resolution of `--handler SPEC`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from collector.errors import ConfigError
from collector.handlers.archive import archive_handler
from collector.handlers.base import HandlerContext, HandlerFactory, simple
from collector.handlers.builtin import log_job, noop, stats_handler
from collector.handlers.forward import forward_handler

__all__ = ["HandlerContext", "HandlerFactory", "builtin_handlers", "resolve"]


def builtin_handlers() -> dict[str, HandlerFactory]:
    """Built-in handler names and their factories."""
    return {
        "noop": simple(noop),
        "log": simple(log_job),
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
    return simple(target)
