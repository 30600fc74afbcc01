"""Reading an strace log of a real server: which bytes went to which file, and when.

`strace -f -y -s N -o FILE` prints one line per system call of every thread, in the
order strace handled them, each with the path of its file descriptor (`-y`). A call that
another thread's call interrupted is printed in two parts, `name(args <unfinished ...>`
and later `<... name resumed>) = result` on a line of the same thread. `parse_trace`
joins the two parts into one `Call` that knows both line numbers: where the call was
entered (its arguments, the written bytes, are printed there) and where its result was
printed (the call had returned by then).

Order across threads is exact where it matters here: a thread stopped at a syscall exit
waits for strace, so when one thread's call returns before another thread's call starts
(the writer's fdatasync, then the loop's send of the answer it allowed), the first
call's result line comes before the second call's entry line.

`unsynced_answers` applies the rule of issue 14 to such a log: every `202` must go out
only after a sync of the queue's WAL that came after the commit holding that request's
events.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.support.paths import REPO
from tests.support.server import free_port

TRACED: Final = "fdatasync,fsync,pwrite64,write,writev,sendto,sendmsg"
SYNCS: Final = frozenset({"fsync", "fdatasync"})
SOCKET_WRITES: Final = frozenset({"write", "writev", "sendto", "sendmsg"})
FRAME_HEADER: Final = 24  # bytes of a WAL frame header, written by its own pwrite64

_LINE = re.compile(r"^(\d+)\s+(?:\d{2}:\d{2}:\d{2}\.\d+\s+)?(.*)$")
_ENTRY = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_FD = re.compile(r"^(\d+)<([^>]*)>")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
_SIMPLE_ESCAPES: Final = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8,
                          '"': 34, "\\": 92, "'": 39, "?": 63}


@dataclass
class Call:
    """One system call of the traced process."""

    entered: int  # line number of the entry (arguments, written bytes)
    returned: int | None  # line number of the result; None if it never returned
    tid: int
    name: str
    path: str  # what -y printed for the first argument's descriptor ("" if none)
    data: bytes  # every string argument, decoded and joined
    result: int | None


def decode_strings(text: str) -> tuple[bytes, str]:
    """The bytes of every `"..."` string in `text` (strace's C escapes undone), joined,
    and the text outside the strings."""
    data = bytearray()
    outside: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != '"':
            outside.append(c)
            i += 1
            continue
        i += 1
        while i < n and text[i] != '"':
            c = text[i]
            if c != "\\" or i + 1 >= n:
                data += c.encode("latin-1", "replace")
                i += 1
                continue
            e = text[i + 1]
            if e in "01234567":
                j = i + 1
                while j < n and j < i + 4 and text[j] in "01234567":
                    j += 1
                data.append(int(text[i + 1:j], 8) & 0xFF)
                i = j
            elif e == "x" and i + 3 < n:
                data.append(int(text[i + 2:i + 4], 16))
                i += 4
            else:
                data.append(_SIMPLE_ESCAPES.get(e, ord(e) & 0xFF))
                i += 2
        i += 1  # the closing quote
        if text.startswith("...", i):  # the string was cut at -s bytes
            i += 3
    return bytes(data), "".join(outside)


def _result(outside: str) -> int | None:
    found = _RESULT.findall(outside)
    return int(found[-1]) if found else None


def parse_trace(text: str) -> list[Call]:
    """Every system call in an `strace -f -y` log, in the order of their entry lines."""
    calls: list[Call] = []
    waiting: dict[int, Call] = {}  # tid -> its call printed as <unfinished ...>
    for number, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        if m is None:
            continue
        tid, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("---", "+++")):
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            call = waiting.pop(tid, None)
            if call is None or call.name != resumed.group(1):
                raise ValueError(f"line {number + 1}: a resumed call never entered: {line!r}")
            more, outside = decode_strings(resumed.group(2))
            call.data += more
            call.returned = number
            call.result = _result(outside)
            continue
        entry = _ENTRY.match(rest)
        if entry is None:
            continue
        fd = _FD.match(entry.group(2))
        data, outside = decode_strings(entry.group(2))
        call = Call(entered=number, returned=None, tid=tid, name=entry.group(1),
                    path=fd.group(2) if fd else "", data=data, result=None)
        calls.append(call)
        if outside.rstrip().endswith("<unfinished ...>"):
            waiting[tid] = call
        else:
            call.returned = number
            call.result = _result(outside)
    return calls


def is_commit_header(call: Call) -> bool:
    """A WAL frame header whose "database size after commit" field is set."""
    return len(call.data) == FRAME_HEADER and call.data[4:8] != b"\0\0\0\0"


@dataclass(frozen=True)
class Answered:
    """What the trace says about one answered request."""

    marker: bytes
    stored: int  # entry line of the first WAL write holding the marker
    committed: int  # result line of the write of the page of that transaction's commit frame
    answered: int  # entry line of the first write of the answer on its socket
    status_line: bytes


def locate(calls: list[Call], wal: str, marker: bytes, first_seq: int) -> Answered | str:
    """Where the request whose events hold `marker` (answered with `first_seq`) was
    written to the WAL, committed and answered; a sentence if the trace lacks a part."""
    wal_writes = [c for c in calls if c.name == "pwrite64" and c.path == wal
                  and c.result is not None and c.result >= 0]
    holder = next((c for c in wal_writes if marker in c.data), None)
    if holder is None:
        return f"{marker.decode()}: no write to {wal} holds its events"
    same_thread = [c for c in wal_writes if c.tid == holder.tid and c.entered >= holder.entered]
    # The header of the frame that holds the marker is written just before it; the
    # transaction ends with the first commit frame from there on.
    before = [c for c in wal_writes if c.tid == holder.tid and c.entered < holder.entered]
    frames = ([before[-1]] if before else []) + same_thread
    commit_at = next((i for i, c in enumerate(frames) if is_commit_header(c)), None)
    if commit_at is None or commit_at + 1 >= len(frames):
        return f"{marker.decode()}: written to the WAL at line {holder.entered + 1} " \
               "but no commit frame follows"
    commit_page = frames[commit_at + 1]
    assert commit_page.returned is not None
    needle = b'"first_seq":%d,' % first_seq
    sent = [c for c in calls if c.name in SOCKET_WRITES and c.path.startswith(("socket:", "TCP"))]
    body = next((c for c in sent if b'"accepted":' in c.data and needle in c.data), None)
    if body is None:
        return f"{marker.decode()}: no answer with first_seq {first_seq} written to a socket"
    # Each request has a connection of its own: the answer starts with its first write.
    start = min((c for c in sent if c.path == body.path), key=lambda c: c.entered)
    return Answered(marker=marker, stored=holder.entered, committed=commit_page.returned,
                    answered=start.entered, status_line=start.data.split(b"\r\n", 1)[0])


def synced_between(calls: list[Call], wal: str, after: int, before: int) -> list[Call]:
    """Syncs of the WAL entered after line `after` that returned 0 before line `before`."""
    return [c for c in calls if c.name in SYNCS and c.path == wal and c.result == 0
            and c.returned is not None and c.entered > after and c.returned < before]


def unsynced_answers(calls: list[Call], wal: str, requests: list[tuple[bytes, int]]
                     ) -> list[str]:
    """For each request (marker, first_seq): its 202 must be written only after a sync of
    the WAL that began after the request's commit frame was written. One sentence per
    request that breaks the rule or cannot be found in the trace."""
    problems: list[str] = []
    for marker, first_seq in requests:
        found = locate(calls, wal, marker, first_seq)
        if isinstance(found, str):
            problems.append(found)
            continue
        if not found.status_line.startswith(b"HTTP/1.1 202"):
            problems.append(f"{marker.decode()}: answer starts {found.status_line!r}")
        if not found.committed < found.answered:
            problems.append(f"{marker.decode()}: answered at line {found.answered + 1} "
                            f"before its commit was written (line {found.committed + 1})")
        elif not synced_between(calls, wal, found.committed, found.answered):
            problems.append(
                f"{marker.decode()} (seq {first_seq}): its 202 went out at trace line "
                f"{found.answered + 1} with no fsync/fdatasync of {Path(wal).name} "
                f"completed after its commit frame was written (line {found.committed + 1})")
    return problems


def commits_between(calls: list[Call], wal: str, after: int, before: int) -> int:
    """WAL commit frames written between the two lines (acknowledgement-only commits when
    no request was in flight)."""
    return sum(1 for c in calls if c.name == "pwrite64" and c.path == wal
               and after < c.entered < before and is_commit_header(c))


# -- a real server under strace ------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "PID (comm) STATE PPID ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class TracedServer:
    """`collector serve` started by `strace -f -y`, every call listed in TRACED logged."""

    def __init__(self, strace: str, data_dir: Path, trace: Path, *,
                 args: list[str], env: dict[str, str] | None = None) -> None:
        self.strace = strace
        self.data_dir = data_dir
        self.trace = trace
        self.args = args
        self.env = env or {}
        self.port = free_port()
        self.log_path = trace.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until /readyz answers 200 (an error after `timeout` s)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env.update(self.env)
        repo = str(REPO)
        env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.strace, "-f", "--seccomp-bpf", "-y", "-tt", "-s", "65536",
                 "-e", f"trace={TRACED}", "-o", str(self.trace),
                 sys.executable, "-m", "collector", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"strace/server exited {self.proc.returncode}: "
                                     f"{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout} s: {self.output()[-3000:]}")
            time.sleep(0.05)
        children = _children(self.proc.pid)
        assert len(children) == 1, f"strace {self.proc.pid} has children {children}"
        self.server_pid = children[0]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the server (strace then writes the rest of its log and exits with the
        server's exit code); returns that code."""
        assert self.proc is not None
        assert self.server_pid is not None
        os.kill(self.server_pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the server and strace if they still run (cleanup after a failure)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.server_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
