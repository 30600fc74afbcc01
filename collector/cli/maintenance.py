"""`collector check` and `collector recover`, and `collector serve --check`.

* `check` reads the queue file (read-only, also while the daemon runs) and says whether
  it is sound, with its numbers: exit 0 when it is, 1 when it is damaged.
* `recover` (the daemon stopped) moves a damaged queue file aside, never deleting it,
  and salvages every readable job into a fresh file, in order, with their seqs; it says
  how many and which seqs could not be read.
* `serve --check` runs the full check before the daemon starts. Without it the daemon
  checks the file itself only after an unclean stop (a quick check, which keeps a clean
  start fast); with it, a file damaged while the daemon was stopped (a bad copy, a
  failing disk) is caught before the first job instead of by the worker mid-way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from collector.cli.output import out
from collector.config import load_settings
from collector.errors import QueueCorruptError, StartupError
from collector.files import locked_data_dir
from collector.queue import FileReport, NothingToRecoverError, inspect_file, recover_file

EXIT_SOUND: Final = 0
EXIT_DAMAGED: Final = 1


def _data_dir(args: argparse.Namespace) -> Path:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["server.data_dir"] = args.data_dir
    return load_settings(getattr(args, "config", None), overrides=overrides).server.data_dir


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat(timespec="seconds")


def _check_json(report: FileReport) -> dict[str, Any]:
    return {
        "path": str(report.path), "exists": report.exists, "sound": not report.problems,
        "problems": report.problems, "pending": report.pending, "dead": report.dead,
        "last_seq": report.last_seq, "processed_total": report.processed_total,
        "oldest_pending_at": _iso(report.oldest_pending_at),
        "clean_shutdown": report.clean_shutdown,
    }


def _cmd_check(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    report = inspect_file(data_dir, full=args.full)
    if args.json:
        out(json.dumps(_check_json(report)))
        return EXIT_DAMAGED if report.problems else EXIT_SOUND
    if not report.exists:
        out(f"no queue file {report.path} yet: nothing to check")
        return EXIT_SOUND
    if report.problems:
        for problem in report.problems:
            out(f"  {problem}")
        out(f"queue file {report.path} is DAMAGED ({len(report.problems)} problem(s) "
             f"above); nothing was changed. Stop the daemon and run "
             f"`collector recover --data-dir {data_dir}` to move it aside and salvage every "
             "readable job")
        return EXIT_DAMAGED
    kind = "full" if args.full else "quick"
    stop = "clean" if report.clean_shutdown else "unclean (or still running)"
    out(f"queue file {report.path} is sound ({kind} check): {report.pending} pending, "
         f"{report.dead} dead letters, last seq {report.last_seq}, "
         f"{report.processed_total} processed, last stop {stop}")
    return EXIT_SOUND


def _ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _cmd_recover(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if not (data_dir / "queue.db").exists():
        raise StartupError(f"no queue file {data_dir / 'queue.db'}: nothing to recover")
    # The lock: no daemon may run on the file while it is moved and rebuilt.
    with locked_data_dir(data_dir):
        found = inspect_file(data_dir, full=True)
        if not found.problems and not args.force:
            out(f"queue file {found.path} is sound: nothing to recover "
                 "(--force rebuilds it anyway)")
            return 0
        try:
            report = recover_file(data_dir, dry_run=args.dry_run)
        except NothingToRecoverError as exc:
            raise StartupError(str(exc)) from None
    if args.json:
        out(json.dumps({
            "dry_run": report.dry_run, "damaged_moved_to": str(report.damaged_moved_to),
            "jobs_salvaged": report.jobs_salvaged, "dead_salvaged": report.dead_salvaged,
            "keys_salvaged": report.keys_salvaged, "unreadable_seqs": report.unreadable_ranges,
            "next_seq": report.next_seq, "problems": found.problems,
        }))
        return 0
    lost = (f"; seqs that could not be read: {_ranges(report.unreadable_ranges)}"
            if report.unreadable_ranges else "; every job was readable")
    if report.dry_run:
        out(f"would move {found.path} to {report.damaged_moved_to} and salvage "
             f"{report.jobs_salvaged} jobs, {report.dead_salvaged} dead letters and "
             f"{report.keys_salvaged} Idempotency-Keys{lost}; nothing was changed")
        return 0
    out(f"moved the damaged queue file to {report.damaged_moved_to} (kept, not deleted); "
         f"salvaged {report.jobs_salvaged} jobs in seq order, {report.dead_salvaged} dead "
         f"letters and {report.keys_salvaged} Idempotency-Keys into a fresh {found.path}"
         f"{lost}; new jobs start at seq {report.next_seq}")
    return 0


def _serve_checked(serve: Callable[[argparse.Namespace], int],
                   args: argparse.Namespace) -> int:
    """`serve --check`: the full check first; a damaged file stops the start."""
    if getattr(args, "check", False):
        report = inspect_file(_data_dir(args), full=True)
        if report.problems:
            raise QueueCorruptError(report.path, report.problems)
    return serve(args)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the data dir (default: the configured one)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: Any) -> None:
    """Add `check` and `recover`, and `--check` to `serve`."""
    check = subparsers.add_parser(
        "check", help="is the queue file sound? (exit 0 sound, 1 damaged)",
        description="Read the queue file (read-only; the daemon may run) and report whether "
                    "it is sound, with its numbers. Exit 0 when sound, 1 when damaged.")
    _where(check)
    check.add_argument("--full", action="store_true",
                       help="SQLite's full integrity_check and every job decoded "
                            "(slower), instead of quick_check")
    check.set_defaults(func=_cmd_check)

    recover = subparsers.add_parser(
        "recover", help="move a damaged queue file aside, salvage its jobs into a new one",
        description="With the daemon stopped: keep the damaged queue file under a new name "
                    "(never deleted) and copy every readable job, in seq order with its "
                    "seq, plus dead letters and Idempotency-Keys, into a fresh queue file.")
    _where(recover)
    recover.add_argument("--dry-run", action="store_true",
                         help="say what would be salvaged; change nothing")
    recover.add_argument("--force", action="store_true",
                         help="rebuild even a file that passes the full check")
    recover.set_defaults(func=_cmd_recover)

    serve = subparsers.choices.get("serve")
    if serve is not None:
        serve.add_argument("--check", action="store_true",
                           help="run the full integrity check of the queue file first; "
                                "refuse to start if it is damaged")
        original = serve.get_default("func")
        serve.set_defaults(func=lambda args: _serve_checked(original, args))
