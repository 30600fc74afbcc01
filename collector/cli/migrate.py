"""`collector migrate`: move a stopped SQLite-mode data dir into PostgreSQL.

The daemon must be stopped (the data dir's lock is taken); the database must hold no
events and no statistics yet. Everything is copied in one transaction by
collector.postgres.from_sqlite; the SQLite files are only read. See docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.cli.output import out
from collector.config import POSTGRES_NEEDS_ASYNCPG, load_settings, mask_dsn
from collector.errors import ConfigError, StartupError
from collector.files import locked_data_dir
from collector.logs import configure_logging
from collector.queue import QUEUE_FILE, inspect_file
from collector.stats.damage import find_damage
from collector.stats.schema import SCHEMA_VERSION, STATS_FILE

if TYPE_CHECKING:  # the PostgreSQL mode is optional (asyncpg), imported when it runs
    from collector.postgres.from_sqlite import MigrateReport


def _dsn(text: str) -> str:
    """`--dsn`: a postgresql:// URL (a usage error otherwise, before any work)."""
    if not text.startswith(("postgresql://", "postgres://")) or not text.isprintable():
        raise argparse.ArgumentTypeError(
            "a postgresql:// URL expected (postgresql://user@host:5432/dbname)")
    return text


def _cmd_migrate(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    settings = load_settings(args.config, overrides=overrides)
    dsn = args.dsn or settings.postgres_dsn()
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(POSTGRES_NEEDS_ASYNCPG)
    from collector.postgres.from_sqlite import migrate_to  # optional: asyncpg

    if dsn is None:
        raise ConfigError("no PostgreSQL to migrate into: give --dsn, or set [postgres] dsn "
                          "or dsn_file (or COLLECTOR_POSTGRES_DSN)")
    data_dir = settings.server.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError(f"data dir {data_dir} is a file, not a folder")
    if not ((data_dir / QUEUE_FILE).is_file() or (data_dir / STATS_FILE).is_file()):
        raise StartupError(f"no {QUEUE_FILE} or {STATS_FILE} in {data_dir}: nothing to migrate")
    configure_logging("warning", "console", stream=sys.stderr)  # the report alone on stdout
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked_data_dir(data_dir))
        except StartupError as exc:
            raise StartupError(f"{exc}: stop the daemon first") from None
        _refuse_damaged(data_dir)
        report = asyncio.run(migrate_to(
            dsn, data_dir, stats_version=SCHEMA_VERSION,
            key_ttl_s=settings.queue.idempotency_ttl_hours * 3600))
    _print(report, data_dir, mask_dsn(dsn))
    return 0


def _refuse_damaged(data_dir: Path) -> None:
    """A damaged file is not copied: its own commands come first."""
    queue = inspect_file(data_dir)
    if queue.problems:
        raise StartupError(f"queue file {queue.path} is damaged ({queue.problems[0]}): run "
                           f"`collector recover --data-dir {data_dir}` first; nothing was "
                           "copied")
    stats = data_dir / STATS_FILE
    found = find_damage(stats, "quick") if stats.is_file() else []
    if found:
        raise StartupError(f"{stats} is damaged ({found[0]}): run `collector rebuild-stats "
                           f"--data-dir {data_dir}` first; nothing was copied")


def _print(report: MigrateReport, data_dir: Path, where: str) -> None:
    seqs = ("" if report.first_seq is None
            else f" (seqs {report.first_seq}-{report.last_seq})")
    out(f"migrated {data_dir} into {where}: {_n(report.jobs, 'pending job')}{seqs}, "
        f"{_n(report.dead, 'dead letter')}, {_n(report.keys, 'Idempotency-Key')}, "
        f"{_n(report.matches, 'match', 'matches')}, {_n(report.players, 'player')} "
        f"({_n(report.stats_rows, 'statistics row')}); new events start at seq "
        f"{report.next_seq}")
    out(f"the SQLite files were only read: move {data_dir} aside (mv {data_dir} "
        f"{data_dir}.migrated) and give each node an empty data dir, so that no daemon in "
        "the SQLite mode applies these jobs a second time")


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def register(subparsers: Any) -> None:
    """Add `migrate`."""
    migrate = subparsers.add_parser(
        "migrate", help="copy a stopped SQLite-mode data dir into an empty PostgreSQL",
        description="With the daemon stopped: copy the queue's pending jobs (with their "
                    "seqs), dead letters, retained Idempotency-Keys and every table of "
                    "stats.db into an empty PostgreSQL database, in one transaction, for "
                    "the PostgreSQL mode (docs/scale-out.md). Refused when the database "
                    "already holds events or statistics. The SQLite files are only read. "
                    "Exit 0 done, 1 refused or failed, 2 usage error.")
    migrate.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    migrate.add_argument("--data-dir", type=Path, metavar="DIR",
                         help="the data dir (default: the configured one)")
    migrate.add_argument("--dsn", type=_dsn, metavar="DSN",
                         help="postgresql://user@host:port/dbname (default: [postgres] dsn "
                              "or dsn_file, or COLLECTOR_POSTGRES_DSN)")
    migrate.set_defaults(func=_cmd_migrate)
