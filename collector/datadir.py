"""The data directory: created if missing, checked writable, locked for one daemon."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from collector.errors import StartupError

LOCK_FILE = "collector.lock"


@contextlib.contextmanager
def locked_data_dir(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `path` so that a second daemon cannot share it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"data dir {path}: cannot create it: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"data dir {path}: not writable by this user")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows has no daemon, only the bridge
        yield path
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"data dir {path}: cannot open lock file: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"data dir {path} is in use by another collector (lock {path / LOCK_FILE})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)
