"""structlog set-up: one processor chain for structlog and stdlib loggers."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any, TextIO, TypeVar

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import Processor

_T = TypeVar("_T")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# syslog priorities, for journald's `<N>` prefix (journalctl -p err).
_SYSLOG = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4,
           "info": 6, "debug": 7}


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


class _ClientFaultFilter(logging.Filter):
    """aiohttp logs a request its parser refuses (bad header byte, oversized line) as
    "Error handling request" at ERROR with a traceback; that is the client's fault and
    answered with a 400, so it becomes one INFO line and cannot flood `journalctl -p err`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"request_refused_by_parser ({type(exc).__name__}: {exc.message})"
            record.args = ()
            record.exc_info, record.exc_text = None, None
        return True


class _PriorityFormatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that adds the journald priority prefix to each rendered line."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG.get(record.levelname.lower(), 6)
        return f"<{priority}>{super().format(record)}"


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is connected to the journal (systemd sets JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Route structlog and stdlib logging through one chain: JSON lines, or console on a TTY."""
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    formatter_cls = (
        _PriorityFormatter if use_json and under_journald(out)
        else structlog.stdlib.ProcessorFormatter
    )
    formatter = formatter_cls(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # aiohttp's access log would add a line per request; rejected requests are logged
    # by the API itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    for old_filter in list(server_log.filters):
        if isinstance(old_filter, _ClientFaultFilter):
            server_log.removeFilter(old_filter)
    server_log.addFilter(_ClientFaultFilter())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=cache,
    )


def detached_task(coro: Coroutine[Any, Any, _T], *, name: str) -> asyncio.Task[_T]:
    """A background task that starts in an empty context, not its creator's.

    A task copies the context it is created in, and the structlog values bound for one
    request (request_id) or one job (seq) live there: a task started by a request or a
    job but serving many (the PostgreSQL writer, the acknowledgement flush, the
    archive's compression) would otherwise name that one in every line it logs.
    """
    return asyncio.create_task(coro, name=name, context=contextvars.Context())
