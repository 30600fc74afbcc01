#!/usr/bin/env python3
"""Crash loop: load, kill -9 at a random moment, restart; then count what was kept.

    python3 scripts/crashtest.py --cycles 50          # the figures in docs/guarantees.md
    python3 scripts/crashtest.py --cycles 3 --json    # what CI runs (tests/test_crashtest.py)

Each cycle starts `python -m collector serve` on one data dir with the handler
`scripts.crashtest:record` (it appends `PID SEQ ID` to a record file, fsynced, for every
job), lets several senders POST uniquely numbered events (single events, arrays and
NDJSON, some with an Idempotency-Key), and SIGKILLs the server at a random moment
between --min-kill and --max-kill seconds after the load began. A last start drains the
queue and stops with SIGTERM. Then the record file is compared with the 202 answers:

  acknowledged  events answered 202
  processed     acknowledged events a handler ran, under the seq their 202 named
  lost          acknowledged events no handler ever ran
  out_of_order  a handler call that was not the next seq of its process, a process that
                began past the first job left unacknowledged, or a seq handled with
                another event than the one its 202 named
  duplicates    handler calls for a seq handled before, split into
                replayed:   the allowed kind, a run at the very start of a process that
                            repeats the last jobs handled before the kill (their
                            acknowledgements were not committed yet);
                unexpected: any other repeat
  stored_unanswered  events whose request was cut by the kill but that were stored and
                processed anyway (allowed: the client just never heard the 202)
  skipped       seqs the queue assigned and no handler ever ran
  stalled       jobs left when the final drain stopped making progress (--stall-timeout)

The exit code is 0 when lost, out_of_order, unexpected duplicates, skipped and stalled
are all 0, else 1 (2 when the run itself could not be made: a server that would not start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD_ENV = "CRASHTEST_RECORD"
DELAY_ENV = "CRASHTEST_DELAY"
HANDLER = "scripts.crashtest:record"
ROOT = Path(__file__).resolve().parent.parent


# -- the handler, imported by the server under test ------------------------------------------

async def record(job: Any) -> None:
    """Append `PID SEQ ID` to $CRASHTEST_RECORD (one O_APPEND write, fsynced), then return."""
    payload = job.payload
    event_id = payload.get("id", "-") if isinstance(payload, dict) else "-"
    fd = os.open(os.environ[RECORD_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {job.seq} {event_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    delay = float(os.environ.get(DELAY_ENV, "0"))
    if delay:
        await asyncio.sleep(delay)


# -- the server -------------------------------------------------------------------------------

class StartError(Exception):
    """The server under test did not start."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One `collector serve` process."""

    data_dir: Path
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (not waiting for it to be ready)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--handler", HANDLER],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
            )
        return self.proc

    async def start(self, within: float = 30.0) -> None:
        """Start and wait until /readyz answers 200."""
        import aiohttp

        proc = self.spawn()
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise StartError(f"server exited {proc.returncode}; see {self.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        self.kill()
        raise StartError(f"server not ready within {within} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


# -- the load ---------------------------------------------------------------------------------

@dataclass
class Load:
    """What the senders saw."""

    acknowledged: dict[str, int] = field(default_factory=dict)  # event id -> seq from its 202
    unanswered: set[str] = field(default_factory=set)  # ids of requests cut by the kill
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (not 202)
    requests: int = 0


def build_body(rng: random.Random, ids: list[str]) -> tuple[bytes, str]:
    """A request body for these event ids: one object, an array or NDJSON."""
    events = [{"id": i, "Event": "UpdateState",
               "Data": {"Players": [{"Name": "p" * rng.randint(1, 30), "Score": n}]}}
              for n, i in enumerate(ids)]
    kind = rng.random()
    if len(events) == 1 and kind < 0.6:
        return json.dumps(events[0]).encode(), "application/json"
    if kind < 0.8:
        return json.dumps(events).encode(), "application/json"
    return b"\n".join(json.dumps(e).encode() for e in events) + b"\n", "application/x-ndjson"


async def sender(session: Any, url: str, rng: random.Random, prefix: str, load: Load,
                 stop: asyncio.Event) -> None:
    """POST events until told to stop or the server goes away."""
    import aiohttp

    n = 0
    while not stop.is_set():
        count = rng.choice([1, 1, 1, 2, 3, 5, 8])
        ids = [f"{prefix}.{n + k}" for k in range(count)]
        n += count
        body, ctype = build_body(rng, ids)
        headers = {"Content-Type": ctype}
        if rng.random() < 0.1:
            headers["Idempotency-Key"] = f"{prefix}.{n}"
        load.requests += 1
        try:
            async with session.post(f"{url}/v1/events", data=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            load.unanswered.update(ids)  # killed mid-request: stored or not, we cannot know
            return
        if status != 202:
            load.refused[status] = load.refused.get(status, 0) + 1
            await asyncio.sleep(0.05)
            continue
        for k, event_id in enumerate(ids):
            load.acknowledged[event_id] = answer["first_seq"] + k


# -- the analysis -----------------------------------------------------------------------------

@dataclass
class Report:
    """The figures; see the module docstring."""

    cycles: int
    acknowledged: int = 0
    processed: int = 0
    lost: int = 0
    out_of_order: int = 0
    duplicates_replayed: int = 0
    duplicates_unexpected: int = 0
    stored_unanswered: int = 0
    skipped: int = 0
    handler_calls: int = 0
    last_seq: int = 0
    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    longest_replay: int = 0
    stalled: int = 0  # jobs left when the final drain stopped making progress
    seconds: float = 0.0
    seed: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.out_of_order or self.duplicates_unexpected
                    or self.skipped or self.stalled)


def read_record(path: Path) -> list[tuple[int, int, str]]:
    """(pid, seq, id) for every complete line of the record file."""
    calls = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                pid, seq, event_id = line.split()
                calls.append((int(pid), int(seq), event_id))
    return calls


def queue_head(data_dir: Path) -> int | None:
    """The first job left in the queue file of a killed server (None when it holds none).

    Read from a copy of the file and its WAL: the next start must find them untouched.
    """
    from collector.queue import read_pending

    with tempfile.TemporaryDirectory(prefix="crashtest-copy-") as tmp:
        for suffix in ("", "-wal"):
            src = data_dir / f"queue.db{suffix}"
            if src.exists():
                shutil.copyfile(src, Path(tmp) / f"queue.db{suffix}")
        jobs = read_pending(Path(tmp))
    return jobs[0].seq if jobs else None


def analyse(calls: list[tuple[int, int, str]], pids: list[int], heads: list[int | None],
            load: Load, last_seq: int, report: Report) -> None:
    """Fill `report` from the handler calls of each process (in start order); heads[i] is
    the first job the kill of process i left in the file."""
    def example(text: str) -> None:
        if len(report.examples) < 10:
            report.examples.append(text)

    report.handler_calls = len(calls)
    report.last_seq = last_seq
    handled: dict[int, str] = {}  # seq -> event id of its first handling
    top = 0  # highest seq handled by the earlier processes and this one so far
    for index, pid in enumerate(pids):
        run = [(seq, eid) for p, seq, eid in calls if p == pid]
        replaying = True  # still in the run of repeats a restart may begin with
        replayed = 0
        previous: int | None = None
        head = heads[index - 1] if index else None
        for seq, eid in run:
            if previous is None:
                if seq > top + 1:
                    report.out_of_order += 1
                    example(f"process {pid} began at seq {seq}; seqs to {top} were handled")
                elif head is not None and seq != head:
                    report.out_of_order += 1
                    example(f"process {pid} began at seq {seq}, the first unacknowledged "
                            f"job was {head}")
            elif seq != previous + 1:
                report.out_of_order += 1
                example(f"process {pid} handled seq {seq} after {previous}")
            previous = seq
            first = handled.setdefault(seq, eid)
            if first != eid:
                report.out_of_order += 1
                example(f"seq {seq} was event {first}, later {eid}")
            if seq <= top:
                if replaying:
                    report.duplicates_replayed += 1
                    replayed += 1
                else:
                    report.duplicates_unexpected += 1
                    example(f"process {pid} handled seq {seq} again")
            else:
                replaying = False
            top = max(top, seq)
        report.longest_replay = max(report.longest_replay, replayed)
    seq_of_event = {eid: seq for seq, eid in handled.items()}
    for eid, seq in load.acknowledged.items():
        got = seq_of_event.get(eid)
        if got is None:
            report.lost += 1
            example(f"event {eid} (seq {seq}) acknowledged, never handled")
        elif got != seq:
            report.out_of_order += 1
            example(f"event {eid}: 202 said seq {seq}, handled as seq {got}")
        else:
            report.processed += 1
    report.acknowledged = len(load.acknowledged)
    report.stored_unanswered = sum(
        1 for eid in load.unanswered if eid in seq_of_event and eid not in load.acknowledged)
    report.skipped = sum(1 for seq in range(1, last_seq + 1) if seq not in handled)
    if report.skipped:
        example(f"{report.skipped} stored seqs never handled")
    report.requests = load.requests
    report.refused = {str(k): v for k, v in sorted(load.refused.items())}


# -- the loop ---------------------------------------------------------------------------------

async def queue_numbers(url: str) -> dict[str, Any]:
    """GET /v1/queue."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{url}/v1/queue") as resp:
        numbers: dict[str, Any] = await resp.json()
        return numbers


async def run(args: argparse.Namespace, work: Path) -> Report:
    """Every cycle, the final drain, and the analysis."""
    import aiohttp

    rng = random.Random(args.seed)
    data_dir = work / "data"
    record_file = work / "record.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update({
        RECORD_ENV: str(record_file),
        DELAY_ENV: str(args.handler_delay),
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        "COLLECTOR_QUEUE_ACK_INTERVAL_MS": str(args.ack_interval_ms),
        "COLLECTOR_QUEUE_DURABILITY": args.durability,
        "COLLECTOR_LOG_LEVEL": "warning",
    })
    load = Load()
    pids: list[int] = []
    heads: list[int | None] = []
    report = Report(cycles=args.cycles, seed=args.seed)
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    for cycle in range(args.cycles):
        server = Server(data_dir, env, work / "server.log")
        await server.start()
        assert server.proc is not None
        pids.append(server.proc.pid)
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            senders = [
                asyncio.create_task(sender(session, server.url, random.Random(rng.random()),
                                           f"c{cycle}s{s}", load, stop))
                for s in range(args.senders)
            ]
            await asyncio.sleep(rng.uniform(args.min_kill, args.max_kill))
            server.kill()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*senders), timeout=60)
        heads.append(queue_head(data_dir))
        if not args.json:
            print(f"cycle {cycle + 1}/{args.cycles}: {len(load.acknowledged)} acknowledged "
                  f"so far", file=sys.stderr)
    final = Server(data_dir, env, work / "server.log")
    await final.start()
    assert final.proc is not None
    pids.append(final.proc.pid)
    # Drain: wait while the worker makes progress; a queue that stops moving is a finding
    # (its jobs count as skipped), not a reason to wait forever.
    progress_at, done = time.monotonic(), -1
    while True:
        numbers = await queue_numbers(final.url)
        if numbers["pending"] == 0 and numbers["in_flight"] == 0:
            break
        if numbers["processed_total"] != done:
            progress_at, done = time.monotonic(), numbers["processed_total"]
        elif time.monotonic() - progress_at > args.stall_timeout:
            report.stalled = int(numbers["pending"]) + int(numbers["in_flight"])
            break
        await asyncio.sleep(0.1)
    code = final.terminate()
    if code != 0:
        raise StartError(f"the final server exited {code} on SIGTERM; see {work}/server.log")
    analyse(read_record(record_file), pids, heads, load, int(numbers["last_seq"]), report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10, help="load + kill cycles (10)")
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders (8)")
    parser.add_argument("--min-kill", type=float, default=0.2,
                        help="earliest kill, seconds after the load began (0.2)")
    parser.add_argument("--max-kill", type=float, default=1.5,
                        help="latest kill, seconds after the load began (1.5)")
    parser.add_argument("--ack-interval-ms", type=int, default=50,
                        help="queue.ack_interval_ms of the server (50, the default)")
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--handler-delay", type=float, default=0.0,
                        help="seconds each handler call sleeps after recording (0)")
    parser.add_argument("--stall-timeout", type=float, default=15.0,
                        help="give up the final drain after this many seconds without "
                             "progress (15); the jobs left count as skipped")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (default: a temporary dir, removed)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the figures (and nothing else)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.cycles < 1 or args.min_kill < 0 or args.max_kill < args.min_kill:
        parser.error("need --cycles >= 1 and 0 <= --min-kill <= --max-kill")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
    else:
        work = Path(tempfile.mkdtemp(prefix="collector-crashtest-"))
    try:
        report = asyncio.run(run(args, work))
    except StartError as exc:
        print(f"crashtest: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    figures = {**asdict(report), "ok": report.ok}
    if args.json:
        print(json.dumps(figures))
    else:
        for name in ("cycles", "acknowledged", "processed", "lost", "out_of_order",
                     "duplicates_replayed", "duplicates_unexpected", "longest_replay",
                     "stored_unanswered", "skipped", "stalled", "handler_calls", "last_seq",
                     "requests", "refused", "seconds", "seed"):
            print(f"{name:>22}: {figures[name]}")
        for text in report.examples:
            print(f"  e.g. {text}")
        print("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
