"""Is stats.db sound? Damage found when it is opened, read or written becomes one
error, StatsDamagedError: one line naming the file and `collector rebuild-stats`. Nothing
here writes to the file (the checks read through a read-only connection)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final, Literal

from collector.stats.backend import StatsUnavailableError

#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
SQLITE_DAMAGED: Final = frozenset({11, 26})
#: The command that replaces a damaged stats.db (named in every refusal).
REBUILD_COMMAND: Final = "collector rebuild-stats"
Check = Literal["reads", "quick", "full"]


class StatsDamagedError(StatsUnavailableError):
    """stats.db cannot be read: SQLite finds it damaged. It is left as it is."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"statistics database {path} is damaged ({problem}); nothing was changed. "
            f"With the daemon stopped, run `{REBUILD_COMMAND} --data-dir {path.parent}` "
            "to keep it aside and rebuild the statistics from the archive"
        )


def is_damage(exc: BaseException) -> bool:
    """Whether an exception is SQLite saying the file is damaged (not busy, not full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (isinstance(exc, sqlite3.DatabaseError) and isinstance(code, int)
            and code & 0xFF in SQLITE_DAMAGED)


def unclean_stop(path: Path) -> bool:
    """Whether the last writer left frames in the WAL (a crash, kill -9, power cut).

    A clean close checkpoints the WAL and truncates it (SQLite deletes it when no reader
    has the file open), so a WAL with frames means the file was not closed.
    """
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except OSError:
        return False


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: no checkpoint on close, nothing created beside the
    file when there is no WAL (then the file is opened as immutable)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)


#: What an open reads first, besides the schema (the right edge of the big tables too).
_FIRST_READS: Final = (
    ("schema_version", "SELECT max(version) FROM schema_version"),
    ("applied", "SELECT last_seq FROM applied"),
    ("counters", "SELECT name, value FROM counters"),
    ("feeds", "SELECT count(*) FROM feeds"),
    ("matches", "SELECT max(id) FROM matches"),
    ("players", "SELECT max(id) FROM players"),
)


def find_damage(path: Path, check: Check = "reads") -> list[str]:
    """What is wrong with an existing stats.db, read-only; [] when nothing was found.

    `reads`: what an open reads (the schema, the small tables, the right edge of the big
    ones). `quick`: plus SQLite's quick_check (every page, as after an unclean stop).
    `full`: plus integrity_check (indexes against tables too). Only damage counts: a
    missing table or a busy file is left to the regular open. Nothing is written, not
    even a checkpoint, so a damaged file stays byte for byte as it was.
    """
    try:
        conn = _connect_read_only(path)
    except sqlite3.Error as exc:
        return [str(exc)] if is_damage(exc) else []
    try:
        try:
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, sql in _FIRST_READS:
                if table in tables:
                    conn.execute(sql).fetchall()
            if check == "reads":
                return []
            pragma = "integrity_check" if check == "full" else "quick_check"
            found = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(20)")]
        except sqlite3.Error as exc:
            return [str(exc)] if is_damage(exc) else []
        return [] if found == ["ok"] else found
    finally:
        conn.close()
