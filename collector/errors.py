"""Exceptions that cross module boundaries."""

from __future__ import annotations


class PermanentError(Exception):
    """Raised by a handler: this job can never succeed, dead-letter it at once."""


class ConfigError(Exception):
    """A setting, flag or file is wrong; the message is one line for the user."""


class StartupError(Exception):
    """The daemon cannot start (data dir, lock, port); the message is one line."""


class QueueClosedError(Exception):
    """The queue no longer accepts work because the daemon is shutting down."""


class QueueFullError(Exception):
    """Accepting the request would exceed `queue.max_pending`."""


class StorageFullError(Exception):
    """The disk (or SQLite's page limit) is full; nothing of the request was stored."""


class StorageError(Exception):
    """Another storage failure; nothing of the request was stored."""


class QueueCorruptError(Exception):
    """The queue file failed its integrity check; it is kept, never deleted or skipped."""

    def __init__(self, path: object, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        first = problems[0] if problems else "unknown damage"
        super().__init__(
            f"queue file {path} is damaged ({first}); nothing was changed. "
            f"Run `collector recover --data-dir {getattr(path, 'parent', path)}` to move it "
            "aside and salvage every readable job"
        )
