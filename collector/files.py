"""Files that must reach the disk, and directories that one process holds at a time."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from collector.errors import StartupError


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so that a rename or a new file in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(directory: Path, lock_file: str, *, what: str, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory`/`lock_file` (created as needed) until exit.

    `what` names the directory in messages ("data dir", "spool dir"); `holder` names who
    else holds it ("another collector"). Another holder, or a directory that cannot be
    created or written, is a one-line StartupError. The lock is released when the file
    closes, so a killed process never leaves it held. On Windows (only the bridge runs
    there) it is an msvcrt byte lock.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{what} {directory}: cannot create it: {exc.strerror}") from None
    path = directory / lock_file
    try:
        handle = path.open("a+b")
    except OSError as exc:
        raise StartupError(f"{what} {directory}: cannot open lock file: {exc.strerror}") from None
    with handle:
        try:
            if sys.platform == "win32":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StartupError(f"{what} {directory} is in use by {holder} (lock {path})"
                               ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        yield


LOCK_FILE = "collector.lock"


@contextlib.contextmanager
def locked_data_dir(path: Path) -> Iterator[Path]:
    """Hold the data dir for one daemon (or one offline command): created if missing,
    checked writable, locked until exit."""
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"data dir {path}: not writable by this user")
    with exclusive_lock(path, LOCK_FILE, what="data dir", holder="another collector"):
        yield path
