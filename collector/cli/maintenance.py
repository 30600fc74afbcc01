"""`collector check` and `collector recover`, and `collector serve --check`.

* `check` reads the queue file (read-only, also while the daemon runs) and says whether
  it is sound, with its numbers: exit 0 when it is, 1 when it is damaged.
* `recover` (the daemon stopped) moves a damaged queue file aside, never deleting it,
  and salvages every readable job into a fresh file, in order, with their seqs; it says
  how many and which seqs could not be read.
* `rebuild-stats` (the daemon stopped) keeps stats.db aside, never deleting it, and
  builds a fresh one from the archive handler's day files: every archived event, in seq
  order, through the stats store's own apply. Without an archive it says so, and starts
  an empty file only when told (`--empty`, or yes on a terminal).
* In the PostgreSQL mode (`[postgres] dsn` set) the queue is not in the data dir: these
  commands, and the admin commands given `--data-dir` without `--url`, refuse with one
  line (exit 2) rather than read or create a SQLite file that no node uses.
* `serve --check` runs the full check before the daemon starts. Without it the daemon
  checks the file itself only after an unclean stop (a quick check, which keeps a clean
  start fast); with it, a file damaged while the daemon was stopped (a bad copy, a
  failing disk) is caught before the first job instead of by the worker mid-way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gzip
import heapq
import json
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from collector.cli.output import out
from collector.config import Settings, load_settings
from collector.errors import ConfigError, QueueCorruptError, StartupError
from collector.files import aside_name, fsync_path, locked_data_dir
from collector.handlers.archive import ARCHIVE_DIR
from collector.jobs import Job
from collector.logs import configure_logging
from collector.queue import FileReport, NothingToRecoverError, inspect_file, recover_file
from collector.stats.damage import find_damage
from collector.stats.schema import STATS_FILE
from collector.stats.store import StatsStore

EXIT_SOUND: Final = 0
EXIT_DAMAGED: Final = 1


#: In the PostgreSQL mode: what a command would do to the data dir, and what to do instead.
_ON_POSTGRES: Final = {
    "check": ("reads the data dir's SQLite queue file",
              "ask a node instead: `collector status --url URL`"),
    "recover": ("rebuilds the data dir's SQLite queue file",
                "PostgreSQL recovers its own; ask a node: `collector status --url URL`"),
    "rebuild-stats": ("rebuilds the data dir's stats.db",
                      "there is nothing in the data dir to rebuild"),
}
_ASK_A_NODE: Final = ("works on the data dir's SQLite queue file",
                      "ask a node instead: --url URL, without --data-dir")
#: The admin commands that, given --data-dir and no --url, open the data dir's queue file.
_QUEUE_FILE_COMMANDS: Final = ("status", "dead", "queue", "export", "import")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["server.data_dir"] = args.data_dir
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _sqlite_only(settings: Settings, command: str, refusal: tuple[str, str]) -> None:
    """Refuse `command` (one line, exit 2) when the queue is in PostgreSQL."""
    if settings.postgres_dsn() is not None:
        does, instead = refusal
        raise ConfigError(
            f"{command} {does}, and the queue and statistics are in PostgreSQL "
            f"([postgres] dsn is set): {instead}; an old SQLite data dir goes into "
            "PostgreSQL with `collector migrate` (or is worked on without the [postgres] "
            "settings)")


def _data_dir(args: argparse.Namespace) -> Path:
    """The data dir of a command that works on its SQLite files (refused otherwise)."""
    settings = _settings(args)
    _sqlite_only(settings, f"`collector {args.command}`", _ON_POSTGRES[args.command])
    return _folder(settings)


def _folder(settings: Settings) -> Path:
    data_dir = settings.server.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError(f"data dir {data_dir} is a file, not a folder")
    return data_dir


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


# -- rebuild-stats ---------------------------------------------------------------------------

#: A day file of the archive handler (collector/handlers/archive.py writes them).
_DAY_FILE: Final = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?$")
_REVIVED: Final = re.compile(rb'^\{"seq":(\d+),"revived":true')
_SHOWN_PROBLEMS: Final = 5


@dataclass(slots=True)
class _Replay:
    """What reading (and replaying) the archive found."""

    files: int = 0
    events: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    skipped: int = 0  # lines whose seq was already replayed (both forms of a day, ...)
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.unreadable += 1
        if len(self.problems) < _SHOWN_PROBLEMS:
            self.problems.append(text)


def archive_files(directory: Path) -> list[Path]:
    """The archive's day files, oldest day first; of a day kept in both forms (a
    compression cut short), the .jsonl.gz before the .jsonl that was appended after it."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        day = _DAY_FILE.match(path.name)
        if day:
            found.append((day.group(1), 0 if day.group(2) else 1, path))
    return [path for _day, _form, path in sorted(found)]


def _lines(path: Path, seen: _Replay) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a day file; a file that cannot be read to its end is a
    problem, and the lines before the failure still count."""
    number = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield number, line
    except (OSError, EOFError, zlib.error) as exc:
        seen.problem(f"{path.name}: unreadable after line {number} ({exc})")


def _job(path: Path, number: int, line: bytes, seen: _Replay) -> Job | None:
    """The Job an archive line holds (as the worker handed it over), or None if damaged."""
    try:
        record = orjson.loads(line)
        seq, received_at = record["seq"], record["received_at"]
        source, sequence = record.get("source"), record.get("sequence")
        if not (isinstance(seq, int) and seq > 0 and isinstance(received_at, int | float)
                and (source is None or isinstance(source, str))
                and (sequence is None or isinstance(sequence, int))):
            raise ValueError("bad field types")
        return Job(seq, record["payload"], float(received_at), source=source,
                   sequence=sequence)
    except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
        seen.problem(f"{path.name} line {number}: {exc}")
        return None


def archived_jobs(files: list[Path], seen: _Replay) -> Iterator[Job]:
    """Every archived job once, in seq order.

    The archive writes in seq order across its days, except a dead letter put back in
    its old place (a line marked revived, with a seq below the ones before it): those
    few are read first and merged in at their place. A seq already given (a day kept in
    both forms) is skipped and counted.
    """
    revived: list[tuple[int, int, Job]] = []
    for path in files:
        for number, line in _lines(path, _Replay()):  # an unreadable file: counted below
            if _REVIVED.match(line):
                job = _job(path, number, line, seen)  # the second pass skips these lines
                if job is not None:
                    heapq.heappush(revived, (job.seq, len(revived), job))
    last = 0
    for path in files:
        seen.files += 1
        for number, line in _lines(path, seen):
            if _REVIVED.match(line):
                continue
            job = _job(path, number, line, seen)
            if job is None:
                continue
            while revived and revived[0][0] < job.seq:
                early = heapq.heappop(revived)[2]
                if early.seq > last:
                    last = early.seq
                    yield early
                else:
                    seen.skipped += 1
            if job.seq <= last:
                seen.skipped += 1
                continue
            last = job.seq
            yield job
    while revived:
        early = heapq.heappop(revived)[2]
        if early.seq > last:
            last = early.seq
            yield early
        else:
            seen.skipped += 1


async def _replay(build_dir: Path, jobs: Iterator[Job] | None, seen: _Replay) -> None:
    """A fresh stats.db in `build_dir` with every job applied by the store's own code."""
    # Built aside and only moved into place when complete, so a crash loses nothing:
    # commits need no fsync of their own; the file is synced once at the end.
    store = StatsStore(build_dir, durability="normal")
    try:
        await store.open()
        for job in jobs or ():
            outcome = await store.apply(job)
            seen.outcomes[outcome] = seen.outcomes.get(outcome, 0) + 1
            seen.events += 1
            if seen.first_seq is None:
                seen.first_seq = job.seq
            seen.last_seq = job.seq
    finally:
        await store.close()


def _confirm_empty(archive: Path) -> bool:
    """On a terminal, ask before starting an empty stats.db; elsewhere, never assume."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"there is no archive in {archive}: keep stats.db aside and start an "
                   "empty one? [y/N] ")
    return answer.strip().lower() in {"y", "yes"}


def _queue_note(data_dir: Path, after: int, *, empty: bool) -> str:
    """What the daemon does with the queue at its next start, in words."""
    try:
        queue = inspect_file(data_dir)
    except Exception as exc:  # noqa: BLE001 - a note, never a reason to fail the rebuild
        return f"queue.db could not be read ({exc})"
    if not queue.exists:
        return "there is no queue.db: new events start a new line"
    if queue.problems:
        return (f"queue.db is damaged too ({queue.problems[0]}): see `collector check` "
                "and `collector recover`")
    note = (f"queue.db holds {queue.pending} pending jobs (last seq {queue.last_seq}): "
            "the daemon applies them at its next start"
            + ("" if empty else f", after seq {after}"))
    finished = queue.last_seq - queue.pending - queue.dead
    if finished > after and not empty:
        note += (f"; the queue finished jobs up to about seq {finished}, beyond the archive: "
                 "what they did is not in the rebuilt statistics")
    return note


def _cmd_rebuild_stats(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if not data_dir.is_dir():
        raise StartupError(f"data dir {data_dir} does not exist: nothing to rebuild")
    configure_logging("warning", "console", stream=sys.stderr)  # the report alone on stdout
    path = data_dir / STATS_FILE
    archive = data_dir / ARCHIVE_DIR
    with contextlib.ExitStack() as stack:
        # The lock: no daemon may apply jobs to the file while it is moved and rebuilt.
        try:
            stack.enter_context(locked_data_dir(data_dir))
        except StartupError as exc:
            raise StartupError(f"{exc}: stop the daemon first") from None
        return _rebuild(args, data_dir, path, archive)


def _rebuild(args: argparse.Namespace, data_dir: Path, path: Path, archive: Path) -> int:
    exists = path.exists()
    if exists and not path.is_file():
        raise StartupError(f"{path} is a folder, not a statistics database: move it away "
                           "first (rebuild-stats replaces a file)")
    problems = find_damage(path, "full") if exists else []
    files = [] if args.empty else archive_files(archive)
    if exists and not problems and not args.force:
        out(f"statistics database {path} is sound: nothing to rebuild (--force rebuilds "
            "it from the archive anyway)")
        return 0
    if not files and not args.empty:
        if not exists:
            raise StartupError(f"no statistics database {path} and no archive in {archive}: "
                               "nothing to rebuild (the daemon creates an empty one)")
        if args.dry_run or not _confirm_empty(archive):
            raise StartupError(
                f"no archive in {archive} (the `archive` handler never ran here): the "
                "statistics cannot be rebuilt; run `collector rebuild-stats --empty "
                f"--data-dir {data_dir}` to keep {path.name} aside and start an empty one, "
                "which fills with new matches")
    kind = "damaged" if problems else "old"
    aside = aside_name(path, kind)
    seen = _Replay()
    state = f"damaged: {problems[0]}" if problems else ("sound" if exists else "missing")
    if args.dry_run:
        for job in archived_jobs(files, seen):
            seen.events += 1
            seen.first_seq = job.seq if seen.first_seq is None else seen.first_seq
            seen.last_seq = job.seq
        _report(args, path, state, None if not exists else aside, seen, data_dir,
                dry_run=True)
        return 0
    build = Path(tempfile.mkdtemp(prefix=".rebuild-stats-", dir=data_dir))
    try:
        asyncio.run(_replay(build, archived_jobs(files, seen) if files else None, seen))
        built = build / STATS_FILE
        fsync_path(built)
        if exists:
            with contextlib.suppress(OSError):  # rebuilt as root: the daemon's user keeps it
                owner = path.stat()
                os.chown(built, owner.st_uid, owner.st_gid)
            # The WAL first: a fresh stats.db beside the old WAL would read its frames.
            for suffix in ("-wal", "-shm", ""):
                old = Path(f"{path}{suffix}")
                if old.exists():
                    old.rename(Path(f"{aside}{suffix}"))
        built.rename(path)
        fsync_path(data_dir)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(build)
    _report(args, path, state, aside if exists else None, seen, data_dir, dry_run=False)
    return 0


def _report(args: argparse.Namespace, path: Path, state: str, aside: Path | None,
            seen: _Replay, data_dir: Path, *, dry_run: bool) -> None:
    empty = args.empty or not seen.files
    queue = _queue_note(data_dir, seen.last_seq, empty=empty)
    if args.json:
        out(json.dumps({
            "dry_run": dry_run, "path": str(path), "state": state,
            "moved_to": None if aside is None else str(aside), "empty": args.empty,
            "archive_files": seen.files, "events": seen.events, "first_seq": seen.first_seq,
            "last_seq": seen.last_seq, "skipped": seen.skipped, "unreadable": seen.unreadable,
            "problems": seen.problems, "outcomes": seen.outcomes, "queue": queue,
        }))
        return
    seqs = f"seqs {seen.first_seq}-{seen.last_seq}" if seen.events else "no events"
    what = (f"an empty {path}" if empty else
            f"{seen.events} archived events ({seqs}, from {seen.files} day file"
            f"{'' if seen.files == 1 else 's'}) into a fresh {path}")
    if dry_run:
        moved = "" if aside is None else f"move {path} ({state}) to {aside}, "
        verb = "start" if empty else "replay"
        out(f"would {moved}{verb} {what}; nothing was changed")
    else:
        moved = "" if aside is None else f"moved {path} ({state}) to {aside} (kept, not deleted); "
        verb = "started" if empty else "replayed"
        out(f"{moved}{verb} {what}")
    if seen.skipped:
        out(f"  {seen.skipped} archive lines repeat a seq already replayed: skipped")
    if seen.unreadable:
        out(f"  {seen.unreadable} archive lines could not be read and are not in the "
            f"statistics: {'; '.join(seen.problems)}")
    if empty:
        out("  the statistics before now cannot be rebuilt without an archive; the new "
            "file fills with new matches")
    out(f"  {queue}")


def _serve_checked(serve: Callable[[argparse.Namespace], int],
                   args: argparse.Namespace) -> int:
    """`serve --check`: the full check first; a damaged file stops the start."""
    # In the PostgreSQL mode the queue is in the database, which checks its own pages; a
    # queue.db left in the data dir (what `collector migrate` read) is not the queue.
    if getattr(args, "check", False):
        settings = _settings(args)
        if settings.postgres_dsn() is None:
            report = inspect_file(_folder(settings), full=True)
            if report.problems:
                raise QueueCorruptError(report.path, report.problems)
    return serve(args)


def _queue_file_checked(command: Callable[[argparse.Namespace], int],
                        args: argparse.Namespace) -> int:
    """An admin command given --data-dir and no --url: refused in the PostgreSQL mode."""
    if args.data_dir is not None and args.url is None:
        _sqlite_only(_settings(args), f"`collector {args.command} --data-dir`", _ASK_A_NODE)
    return command(args)


def _with_func(parsers: Iterable[argparse.ArgumentParser]) -> Iterator[argparse.ArgumentParser]:
    """The parsers among `parsers` and their sub-commands' that set a `func`."""
    for parser in parsers:
        if parser.get_default("func") is not None:
            yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _with_func(action.choices.values())


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="the data dir (default: the configured one)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: Any) -> None:
    """Add `check`, `recover` and `rebuild-stats`, and `--check` to `serve`; refuse the
    admin commands' --data-dir in the PostgreSQL mode."""
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

    rebuild = subparsers.add_parser(
        "rebuild-stats", help="keep stats.db aside, build a fresh one from the archive",
        description="With the daemon stopped: keep stats.db (damaged or not) under a new "
                    "name, never deleted, and build a fresh one by replaying every event of "
                    "the archive handler's files (archive/*.jsonl, *.jsonl.gz) in seq order. "
                    "Jobs still pending in queue.db are applied by the daemon at its next "
                    "start. Exit 0 done (or nothing to do), 1 refused.")
    _where(rebuild)
    rebuild.add_argument("--dry-run", action="store_true",
                         help="say what would be replayed; change nothing")
    rebuild.add_argument("--force", action="store_true",
                         help="rebuild even a stats.db that passes the integrity check")
    rebuild.add_argument("--empty", action="store_true",
                         help="start an empty stats.db instead (needed when there is no "
                              "archive: the old statistics cannot be rebuilt)")
    rebuild.set_defaults(func=_cmd_rebuild_stats)

    serve = subparsers.choices.get("serve")
    if serve is not None:
        serve.add_argument("--check", action="store_true",
                           help="run the full integrity check of the queue file first; "
                                "refuse to start if it is damaged")
        original = serve.get_default("func")
        serve.set_defaults(func=lambda args: _serve_checked(original, args))

    admin = [subparsers.choices[name] for name in _QUEUE_FILE_COMMANDS
             if name in subparsers.choices]
    for parser in _with_func(admin):
        parser.set_defaults(func=functools.partial(_queue_file_checked,
                                                   parser.get_default("func")))
