"""Operator commands: `status`, `dead list|show|retry|drop`, `queue peek`, `export`, `import`.

Each talks to the running daemon over HTTP (``--url``, default: the configured
host:port, i.e. http://127.0.0.1:8765; token from ``--token-file``, ``--token`` or the
config), or, with ``--data-dir``, works on the queue file of a stopped daemon. The data
dir's lock keeps the two apart: a running daemon makes ``--data-dir`` refuse, except
for ``status``, which only reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson

from collector.cli import args as types
from collector.cli.client import (
    Admin,
    AdminError,
    ImportBatch,
    LocalAdmin,
    connect,
    connection_options,
    daemon_holds,
    daemon_or_data_dir,
    daemon_url,
    http_session,
)
from collector.cli.output import clip, out, print_json, when
from collector.config import Settings
from collector.console import ProgressBar, StatusLine
from collector.files import read_daemon
from collector.logs import configure_logging
from collector.queue import inspect_file

EXIT_FAILED: Final = 1
EXIT_NOT_READY: Final = 3  # like `systemctl status` for a unit that is not active
_STATUS_TIMEOUT_S: Final = 10.0


def _origin(item: dict[str, Any]) -> str:
    if item.get("source") is None and item.get("sequence") is None:
        return "-"
    sequence = item.get("sequence")
    return f"{item.get('source') or '-'}#{'-' if sequence is None else sequence}"


class Progress:
    """Jobs counted, with a progress bar on stderr when it is a terminal (or asked for),
    and a summary line in any case."""

    def __init__(self, verb: str, total: int, *, show: bool | None = None) -> None:
        shown = sys.stderr.isatty() if show is None else show
        self._bar = ProgressBar(StatusLine(sys.stderr) if shown else None, verb, total)
        self.total = total
        self.done = 0

    def _note(self) -> str:
        return f"{self.done}/{max(self.total, self.done)} jobs"

    def advance(self, n: int) -> None:
        """Count `n` more jobs."""
        self.done += n
        self._bar.update(self.done, self._note())

    def finish(self, summary: str) -> None:
        """The last bar and the summary line."""
        self._bar.done(self.done, self._note())
        sys.stderr.write(summary + "\n")
        sys.stderr.flush()


# -- commands -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, command: Any) -> int:
    configure_logging("warning", "console", stream=sys.stderr)  # results alone on stdout
    try:
        return int(asyncio.run(command(args)))
    except AdminError as exc:
        sys.stderr.write(f"collector: error: {exc}\n")
        return EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    return _run(args, _status)


async def _status(args: argparse.Namespace) -> int:
    async def local(settings: Settings, why: str | None) -> dict[str, Any]:
        data_dir = settings.server.data_dir
        if daemon_holds(data_dir):
            # A daemon runs on this data dir (the healthy case): ask it where it said it
            # answers; if it cannot be asked, its lock still says it runs.
            pid, urls, cert = read_daemon(data_dir)
            tried = None if why is None else (args.url or daemon_url(settings))
            for url in (u for u in urls if u != tried):
                try:
                    async with http_session(args, settings, url=url, cert_file=cert,
                                            read_timeout=_STATUS_TIMEOUT_S) as admin:
                        return await admin.status()
                except AdminError as exc:
                    why = f"asked at {url}: {exc}"
            report = _file_status(data_dir)
            report["state"] = f"running (pid {pid if pid is not None else '?'})"
            if why is not None:
                report["note"] = why
            return report
        report = _file_status(data_dir)
        if why is not None:
            report["not_ready"] = why
        return report

    # A daemon that does not answer (stopped with SIGSTOP, say) is given 10 s, not 60.
    report = await daemon_or_data_dir(args, lambda admin: admin.status(), local,
                                      read_timeout=_STATUS_TIMEOUT_S)
    if args.json:
        print_json(report)
    else:
        _print_status(report)
    if report.get("problems"):
        return EXIT_FAILED
    return 0 if report.get("ready") or report.get("running") else EXIT_NOT_READY


def _file_status(data_dir: Path) -> dict[str, Any]:
    file = inspect_file(data_dir)
    if not file.exists:
        raise AdminError(f"no queue file in {data_dir} (and no daemon answering)")
    running = daemon_holds(data_dir)
    age = None if file.oldest_pending_at is None else max(0.0, time.time() -
                                                          file.oldest_pending_at)
    return {"source": str(file.path), "running": running, "ready": False,
            "not_ready": "the daemon is running" if running else "the daemon is stopped",
            "pending": file.pending, "in_flight": 0, "dead": file.dead,
            "processed_total": file.processed_total, "last_seq": file.last_seq,
            "oldest_pending_age_s": age, "clean_shutdown": file.clean_shutdown,
            "problems": file.problems}


def _print_status(report: dict[str, Any]) -> None:
    state = report.get("state") or (
        "ready" if report.get("ready") else f"not ready: {report.get('not_ready')}")
    age = report.get("oldest_pending_age_s")
    rows = [
        ("from", report["source"]),
        ("state", state),
    ]
    if report.get("node") is not None:  # the PostgreSQL mode: which node, and its part
        part = "leader, runs the worker" if report.get("leader") else \
            "follower, another node runs the worker"
        rows.append(("node", f"{report['node']} ({part})"))
    rows += [
        ("pending", report["pending"] + report.get("in_flight", 0)),
        ("dead letters", report["dead"]),
        ("processed", report["processed_total"]),
        ("last seq", report["last_seq"]),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
    ]
    if "clean_shutdown" in report and not report.get("running"):
        rows.append(("clean shutdown", "yes" if report["clean_shutdown"] else "NO"))
    if report.get("note"):
        rows.append(("note", report["note"]))
    for warning in report.get("warnings") or []:
        rows.append(("WARNING", warning))
    for problem in report.get("problems") or []:
        rows.append(("PROBLEM", problem))
    for name, value in rows:
        out(f"{name:<15} {value}")


def _cmd_dead(args: argparse.Namespace) -> int:
    return _run(args, _dead)


def _seqs(args: argparse.Namespace) -> list[int] | None:
    if args.all == bool(args.seqs):
        raise AdminError("name the dead letters by seq, or give --all (not both)")
    return None if args.all else list(args.seqs)


async def _dead(args: argparse.Namespace) -> int:
    action = args.dead_command
    seqs = _seqs(args) if action in {"retry", "drop"} else None
    async with connect(args) as admin:
        if seqs:
            await _all_dead(admin, seqs, "retried" if action == "retry" else "dropped")
        if action == "list":
            page = await admin.dead_list(args.limit, args.offset)
            if args.json:
                print_json(page)
            else:
                _print_dead(page)
        elif action == "show":
            print_json(await admin.dead_show(args.seq))
        elif action == "retry":
            answer = await admin.dead_retry(seqs, tail=args.tail)
            if args.json:
                print_json(answer)
            else:
                where = "at the tail" if answer["at"] == "tail" else "in their old place"
                out(f"retried {answer['retried']} {where}: seqs {_ranges(answer['seqs'])}")
            return 0 if answer["retried"] or seqs is None else EXIT_FAILED
        else:
            answer = await admin.dead_drop(seqs)
            if args.json:
                print_json(answer)
            else:
                out(f"dropped {answer['dropped']}")
            return 0 if answer["dropped"] or seqs is None else EXIT_FAILED
    return 0


async def _all_dead(admin: Admin, seqs: list[int], verb: str) -> None:
    """Refuse, before changing anything, seqs that are not dead letters."""
    missing: list[int] = []
    for seq in sorted(set(seqs)):
        try:
            await admin.dead_show(seq)
        except AdminError as exc:
            if str(exc) != f"no dead letter with seq {seq}":
                raise
            missing.append(seq)
    if missing:
        raise AdminError(f"no dead letter with seq {_ranges(missing)}; nothing was {verb}")


def _print_dead(page: dict[str, Any]) -> None:
    dead = page["dead"]
    out(f"{'seq':>10}  {'failed at':<19}  {'tries':>5}  {'source#seq':<16}  error")
    for d in dead:
        out(f"{d['seq']:>10}  {when(d['failed_at']):<19}  {d['attempts']:>5}  "
             f"{clip(_origin(d), 16):<16}  {clip(d['error'], 60)}")
    shown = page["offset"] + len(dead)
    if shown < page["total"]:
        out(f"... {page['total'] - shown} more: --offset {shown}")
    else:
        out(f"{page['total']} dead letter(s)")


def _ranges(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ",".join(parts)


def _cmd_peek(args: argparse.Namespace) -> int:
    return _run(args, _peek)


async def _peek(args: argparse.Namespace) -> int:
    async with connect(args) as admin:
        jobs = await admin.peek(args.limit)
    if args.json:
        print_json(jobs)
        return 0
    out(f"{'seq':>10}  {'received':<19}  {'try':>3}  {'source#seq':<16}  payload")
    for job in jobs:
        out(f"{job['seq']:>10}  {when(job['received_at']):<19}  {job['attempt']:>3}  "
             f"{clip(_origin(job), 16):<16}  {clip(job['payload'], 80)}")
    if not jobs:
        out("the queue is empty")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    return _run(args, _export)


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        fh = open(path, "xb")  # never overwrite an earlier export  # noqa: SIM115
    except FileExistsError:
        raise AdminError(f"{path} exists; choose another file") from None
    except OSError as exc:  # checked before the export began; the disk may still refuse
        why = exc.strerror or str(exc)
        raise AdminError(f"cannot create {path}: {why[:1].lower()}{why[1:]}") from None
    with fh:
        yield fh


async def _export(args: argparse.Namespace) -> int:
    # The output file is checked before the daemon is asked: one line, nothing exported.
    problem = None if args.output == "-" else types.output_problem(args.output)
    if problem is not None:
        raise AdminError(problem)
    async with connect(args) as admin:
        jobs = admin.export()
        total = await anext(jobs)
        assert isinstance(total, int)
        progress = Progress("export", total, show=args.progress)
        last = 0
        try:
            with _output(args.output) as out:
                async for job in jobs:
                    assert isinstance(job, dict)
                    out.write(orjson.dumps(job) + b"\n")
                    last = job["seq"]
                    progress.advance(1)
        except OSError as exc:  # a full disk, a closed pipe: what was written stays
            raise AdminError(f"writing {args.output} failed after {progress.done} jobs: "
                             f"{exc.strerror or exc}") from None
    progress.finish(f"exported {progress.done} pending jobs (last seq {last})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    return _run(args, _import)


def _read_jobs(path: str) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    """(line number, job, payload bytes) of an export file, checked for seq order."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    last_seq = 0
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                job = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AdminError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(job, dict) or not isinstance(job.get("payload"), dict):
                raise AdminError(f'{path}:{number}: not an exported job ({{"payload": {{…}}}})')
            seq = job.get("seq")
            if isinstance(seq, int):
                if seq <= last_seq:
                    raise AdminError(f"{path}:{number}: seq {seq} after {last_seq}: "
                                     "not in seq order")
                last_seq = seq
            yield number, job, orjson.dumps(job["payload"])
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _count_lines(path: str) -> int:
    if path == "-":
        return 0
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError as exc:
        raise AdminError(f"{path}: {exc.strerror}") from None


async def _import(args: argparse.Namespace) -> int:
    total = _count_lines(args.file)
    async with connect(args) as admin:
        by_time = isinstance(admin, LocalAdmin)  # only a put keeps received_at
        progress = Progress("import", total, show=args.progress)
        stored = replayed = 0

        async def send(batch: ImportBatch) -> None:
            nonlocal stored, replayed
            try:
                n, again = await admin.put(batch)
            except AdminError as exc:
                raise AdminError(f"{exc} (after {progress.done} jobs; what was stored is "
                                 "skipped when the same file is imported again)") from None
            stored, replayed = stored + (0 if again else n), replayed + (n if again else 0)
            progress.advance(len(batch.payloads))

        batch = ImportBatch()
        for _number, job, blob in _read_jobs(args.file):
            if not batch.takes(job, blob, by_time=by_time):
                await send(batch)
                batch = ImportBatch()
            batch.add(job, blob)
        if batch.payloads:
            await send(batch)
    note = f"; {replayed} were imported before (same Idempotency-Key)" if replayed else ""
    progress.finish(f"imported {stored} jobs{note}")
    return 0


# -- the parsers ---------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add `status`, `dead`, `queue`, `export` and `import`."""
    common = connection_options()

    status = subparsers.add_parser(
        "status", parents=[common], help="queue depth, dead letters, readiness",
        description="Ask the running daemon; if it does not answer (or with --data-dir), "
                    "read the queue file directly (read-only).")
    status.set_defaults(func=_cmd_status)

    dead = subparsers.add_parser("dead", help="dead letters: list, show, retry, drop")
    actions = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="dead letters in seq order")
    listing.add_argument("--limit", type=types.positive_int, default=50, help="rows (default 50)")
    listing.add_argument("--offset", type=types.count, default=0, help="skip this many")
    show = actions.add_parser("show", parents=[common], help="one dead letter, in full")
    show.add_argument("seq", type=types.positive_int)
    retry = actions.add_parser(
        "retry", parents=[common], help="put dead letters back in line",
        description="By default each job goes back in its old place (its old seq: it runs "
                    "next, before every pending job); with --tail it gets a new seq after "
                    "the newest job. Several seqs in one command keep their order.")
    retry.add_argument("seqs", nargs="*", type=types.positive_int, metavar="SEQ")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.add_argument("--tail", action="store_true", help="at the tail, with new seqs")
    drop = actions.add_parser("drop", parents=[common], help="delete dead letters for good")
    drop.add_argument("seqs", nargs="*", type=types.positive_int, metavar="SEQ")
    drop.add_argument("--all", action="store_true", help="every dead letter")
    dead.set_defaults(func=_cmd_dead)

    queue = subparsers.add_parser("queue", help="look at the line of pending jobs")
    queue_actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    peek = queue_actions.add_parser("peek", parents=[common],
                                    help="the next jobs in line, the one in flight first")
    peek.add_argument("--limit", type=types.positive_int, default=10, help="jobs (default 10)")
    peek.set_defaults(func=_cmd_peek)

    export = subparsers.add_parser(
        "export", parents=[common], help="pending jobs as JSON lines, in seq order",
        description="From a running daemon it is a copy (the worker carries on); to move "
                    "jobs, stop the daemon and export with --data-dir.")
    export.add_argument("-o", "--output", default="-", metavar="FILE",
                        help="write here (default: stdout); never overwrites a file")
    export.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when it is a terminal)")
    export.set_defaults(func=_cmd_export)

    imp = subparsers.add_parser(
        "import", parents=[common], help="add exported jobs at the tail, in order",
        description="Through the daemon's POST /v1/events (or straight into a stopped "
                    "daemon's queue with --data-dir), in file order, with X-Source/"
                    "X-Sequence kept and an Idempotency-Key per batch: importing the same "
                    "file twice stores its jobs once. Jobs get new seqs.")
    imp.add_argument("file", metavar="FILE", help="an export (JSON lines), or - for stdin")
    imp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when it is a terminal)")
    imp.set_defaults(func=_cmd_import)
