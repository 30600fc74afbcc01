"""Files that must reach the disk, and directories that one process holds at a time."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
    except FileExistsError:
        raise StartupError(f"{what} {directory} is a file, not a folder") from None
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


def refuse_unusable_dir(path: Path, what: str) -> None:
    """A one-line StartupError when `path` exists but cannot hold our files: a file, not
    a folder; on a read-only file system; or not writable by this user."""
    if not path.exists():
        return
    if not path.is_dir():
        raise StartupError(f"{what} {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
            raise StartupError(f"{what} {path} is on a read-only file system")
        raise StartupError(f"{what} {path}: not writable by this user")


@contextlib.contextmanager
def locked_data_dir(path: Path) -> Iterator[Path]:
    """Hold the data dir for one daemon (or one offline command): created if missing,
    checked writable, locked until exit."""
    refuse_unusable_dir(path, "data dir")
    with exclusive_lock(path, LOCK_FILE, what="data dir", holder="another collector"):
        yield path


DAEMON_FILE = "daemon.json"


def record_daemon(data_dir: Path, urls: list[str], *, cert_file: Path | None = None) -> None:
    """Write where the running daemon answers (its pid and URLs) into the data dir, for
    `collector status --data-dir` and the other commands that look for it there. With
    HTTPS, also its certificate file (public, never the key), so that a command that can
    read the data dir can trust the certificate of the daemon it finds there."""
    path = data_dir / DAEMON_FILE
    record: dict[str, object] = {"pid": os.getpid(), "urls": urls}
    if cert_file is not None:
        record["tls_cert_file"] = str(cert_file.absolute())
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
    temporary.replace(path)


def forget_daemon(data_dir: Path) -> None:
    """Remove the record at a clean stop (a stale one after kill -9 is harmless: the
    data dir's lock tells whether a daemon runs)."""
    with contextlib.suppress(OSError):
        (data_dir / DAEMON_FILE).unlink()


class DaemonRecord(NamedTuple):
    """What daemon.json says of the data dir's running daemon."""

    pid: int | None
    urls: list[str]
    #: The certificate it serves HTTPS with (None: plain HTTP, or no record).
    tls_cert_file: Path | None = None


def read_daemon(data_dir: Path) -> DaemonRecord:
    """(pid, urls, certificate) of the daemon recorded in the data dir; (pid from the lock,
    [], None) when there is no record."""
    try:
        text = (data_dir / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    holder = int(text) if text.isascii() and text.isdigit() else None
    try:
        record = json.loads((data_dir / DAEMON_FILE).read_text(encoding="utf-8"))
        pid, urls = record["pid"], record["urls"]
        cert = record.get("tls_cert_file")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return DaemonRecord(holder, [])
    # A record left by a daemon killed with -9 names another process (the lock's holder
    # now is whoever took it since): it is not this data dir's daemon.
    if type(pid) is not int or pid != holder or not isinstance(urls, list):
        return DaemonRecord(holder, [])
    return DaemonRecord(pid, [str(url) for url in urls],
                        Path(cert) if isinstance(cert, str) and cert else None)


def aside_name(path: Path, kind: str) -> Path:
    """`<name>.<kind>-<time>` beside `path`, a name no earlier one took (with its -wal and
    -shm): where a file replaced by recover or rebuild-stats is kept, never deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.{kind}-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        aside = path.with_name(f"{path.name}.{kind}-{stamp}-{n}")
    return aside
