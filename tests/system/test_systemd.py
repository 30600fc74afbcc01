"""systemd integration: sd_notify to a real socket, socket activation, the units, nspawn."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import Job
from collector.queue import DurableQueue
from collector.server.systemd import (
    Notifier,
    WorkerHealth,
    listen_sockets,
    stuck_margin,
    watchdog_seconds,
)
from collector.worker import Worker
from tests.support.handlers import stubborn
from tests.support.model import wait_until
from tests.support.paths import REPO
from tests.support.server import free_port
from tests.support.server import wait_until as wait_until_async

UNITS = REPO / "systemd"




class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as put in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next message as a dict, or None when nothing came within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(fields)
        return fields

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], *, timeout: float = 20.0
                 ) -> dict[str, str]:
        """Receive until a message matches; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"no matching message in {timeout} s; got {self.messages}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A notify socket in the abstract namespace, unique to this test."""
    sock = NotifySocket(f"@collector-test-{os.getpid()}-{time.monotonic_ns()}")
    yield sock
    sock.close()


def serve_env(**extra: str) -> dict[str, str]:
    """The environment for a `collector serve` child: no collector or systemd variables."""
    drop = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
            "LISTEN_FDNAMES", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COLLECTOR_") and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def port_answers(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:port is accepted right now."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_json(url: str, *, data: bytes | None = None, timeout: float = 10
              ) -> tuple[int, dict[str, object]]:
    """(status, JSON body) of a request."""
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- the protocol, against a real socket ---------------------------------------------------


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_notifier_sends_datagrams(kind: str, tmp_path: Path) -> None:
    address = f"@collector-unit-{os.getpid()}" if kind == "abstract" else str(tmp_path / "n")
    receiver = NotifySocket(address)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
        assert notifier.enabled
        assert notifier.ready("line one\nline two")
        assert notifier.watchdog()
        assert notifier.stopping("bye")
        got = [receiver.receive(5) for _ in range(3)]
        notifier.close()
    finally:
        receiver.close()
    assert got == [{"READY": "1", "STATUS": "line one line two"}, {"WATCHDOG": "1"},
                   {"STOPPING": "1", "STATUS": "bye"}]


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog_s is None


def test_notifier_survives_a_vanished_manager(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.status("anyone?") is False  # ENOENT: no exception, it carries on
        assert notifier.status("still?") is False
    finally:
        notifier.close()


def test_watchdog_interval_is_for_this_process_only() -> None:
    mine = str(os.getpid())
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None


def test_listen_sockets_only_for_this_pid() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert listen_sockets(env) == []
    assert env == {}  # unset, as sd_listen_fds(1) does
    assert listen_sockets({}) == []


# -- the watchdog's judgement, on a real worker ---------------------------------------------


async def test_health_flags_a_handler_that_ignores_its_timeout(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path, durability="normal")
    await queue.open()
    worker = Worker(queue, [("stubborn", stubborn)], handler_timeout=0.2, backoff_cap=0.5)
    health = WorkerHealth(handler_timeout=0.2, backoff_cap=0.5, margin=0.3)
    worker.start()
    try:
        assert health.problem(worker, queue.pending) is None
        await queue.put([{"n": 1}])
        problem = None

        def flagged() -> bool:
            nonlocal problem
            problem = health.problem(worker, queue.pending)
            return problem is not None

        await wait_until_async(flagged, timeout=30, what="the health check flags the call")
        assert problem is not None
        assert re.fullmatch(r"a handler call has run for \d+ s "
                            r"\(worker\.handler_timeout 0\.2 s\)", problem), problem
        assert worker.busy_for is not None  # the call is still running: it ignored the timeout
        assert worker.busy_for > 0.2 + 0.3
    finally:
        await worker.stop(0.1)
        await queue.close()


async def test_health_flags_a_dead_worker(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path, durability="normal")
    await queue.open()

    async def ok(job: Job) -> None:
        return None

    worker = Worker(queue, [("ok", ok)], handler_timeout=1.0)
    health = WorkerHealth(handler_timeout=1.0, backoff_cap=1.0, margin=1.0)
    worker.start()
    await queue.put([{"n": 1}])
    await wait_until_async(lambda: worker.counters.processed >= 1, timeout=30,
                           what="the worker processes the job")
    assert worker.counters.processed == 1
    assert health.problem(worker, queue.pending) is None
    await worker.stop(1.0)
    assert health.problem(worker, queue.pending) == "worker task is not running"
    await queue.close()


def test_stuck_margin_scales_with_the_timeout() -> None:
    assert stuck_margin(0.5) == 1.0
    assert stuck_margin(8.0) == 4.0
    assert stuck_margin(60.0) == 10.0


# -- a real daemon, a real notify socket ----------------------------------------------------


def start_serve(data_dir: Path, port: int, *, env: dict[str, str], log: Path,
                args: tuple[str, ...] = ("--handler", "noop")) -> subprocess.Popen[bytes]:
    """`python -m collector serve` in the background, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(port),
             "--data-dir", str(data_dir), *args],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )


@pytest.mark.slow
def test_serve_notifies_ready_status_watchdog_stopping(
    notify_socket: NotifySocket, tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    env = serve_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000")
    proc = start_serve(tmp_path / "data", port, env=env, log=tmp_path / "serve.log")
    processes.append(proc)
    ready = notify_socket.wait_for(lambda m: m.get("READY") == "1")
    # READY=1 is sent only after the site listens: the port must answer at once.
    assert port_answers(port)
    assert http_json(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ready"})
    assert ready == {"READY": "1", "STATUS": "queue: 0 pending, 0 dead, 0 processed"}
    before_ready = notify_socket.messages[: notify_socket.messages.index(ready)]
    assert not any(m.get("READY") for m in before_ready)

    status, body = http_json(f"http://127.0.0.1:{port}/v1/events", data=b'[{"a":1},{"a":2}]')
    assert status == 202, body
    pings = 0
    while pings < 3:
        message = notify_socket.wait_for(lambda m: "WATCHDOG" in m or "STATUS" in m)
        pings += message.get("WATCHDOG") == "1"

    def heartbeat_status(m: dict[str, str]) -> bool:
        return set(m) == {"STATUS"} and m["STATUS"].startswith("queue: ")

    # The heartbeat's own STATUS= (its first tick, then every 5 s), not only READY's.
    if not any(heartbeat_status(m) for m in notify_socket.messages):
        notify_socket.wait_for(heartbeat_status)
    wait_until(lambda: http_json(f"http://127.0.0.1:{port}/v1/queue")[1]["processed_total"] == 2,
               "the two events processed")

    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.wait_for(lambda m: m.get("STOPPING") == "1")
    assert stopping == {"STOPPING": "1",
                        "STATUS": "draining; queue: 0 pending, 0 dead, 2 processed"}
    assert proc.wait(30) == 0


@pytest.mark.slow
def test_watchdog_pings_stop_when_the_worker_is_stuck(
    notify_socket: NotifySocket, tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    env = serve_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="400000",
                    COLLECTOR_WORKER_HANDLER_TIMEOUT="0.5",
                    COLLECTOR_SERVER_SHUTDOWN_TIMEOUT="1")
    proc = start_serve(tmp_path / "data", port, env=env, log=tmp_path / "serve.log",
                       args=("--handler", "tests.support.handlers:stubborn"))
    processes.append(proc)
    notify_socket.wait_for(lambda m: m.get("READY") == "1")
    notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1")  # healthy: pings come
    status, _ = http_json(f"http://127.0.0.1:{port}/v1/events", data=b'{"a": 1}')
    assert status == 202
    # handler_timeout 0.5 s + grace 1 s: then the daemon reports itself stuck ...
    stuck_status = re.compile(r"STUCK: a handler call has run for \d+ s "
                              r"\(worker\.handler_timeout 0\.5 s\); "
                              r"queue: 1 pending, 0 dead, 0 processed, oldest \d+ s")
    stuck = notify_socket.wait_for(lambda m: m.get("STATUS", "").startswith("STUCK"))
    assert set(stuck) == {"STATUS"}, stuck
    assert stuck_status.fullmatch(stuck["STATUS"]), stuck
    # ... and no ping follows: each of the next five heartbeat ticks (0.2 s apart) sends
    # its STUCK status, alone; not one WATCHDOG=1 among them.
    following = [notify_socket.wait_for(lambda m: True) for _ in range(5)]
    assert [set(m) for m in following] == [{"STATUS"}] * 5, following
    assert all(stuck_status.fullmatch(m["STATUS"]) for m in following), following
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    events = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
              if line.startswith("{")]
    # Logged as an error when it starts, and again each time the reason's text changes
    # (the seconds the call has run); the first line is the first STUCK status's reason.
    reported = [e for e in events if e["event"] == "worker_stuck"]
    assert reported, events
    assert {(e["level"], e["watchdog"]) for e in reported} == {("error", True)}, reported
    assert reported[0]["reason"] == stuck["STATUS"].removeprefix("STUCK: ").split("; ")[0]
    assert len({e["reason"] for e in reported}) == len(reported), reported


@pytest.mark.slow
def test_socket_activation_with_systemd_socket_activate(
    notify_socket: NotifySocket, tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate not found: apt-get install -y systemd")
    port, unused_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [activate, "-l", f"127.0.0.1:{port}",
             "-E", f"NOTIFY_SOCKET={notify_socket.address}", "-E", "PYTHONPATH",
             sys.executable, "-m", "collector", "serve", "--port", str(unused_port),
             "--data-dir", str(tmp_path / "data"), "--handler", "noop"],
            stdout=out, stderr=subprocess.STDOUT, env=serve_env(),
        )
    processes.append(proc)

    def listening() -> bool:
        assert proc.poll() is None, log.read_text()  # it exited: no point waiting
        return port_answers(port)

    wait_until(listening, "systemd-socket-activate listens")
    # The listener answers before the daemon exists; a connection starts it.
    status, body = http_json(f"http://127.0.0.1:{port}/v1/events", data=b'{"a": 1}', timeout=30)
    assert status == 202, body
    ready = notify_socket.wait_for(lambda m: m.get("READY") == "1")
    # The request that started it is stored before or after READY=1, never lost.
    assert ready["READY"] == "1"
    assert re.fullmatch(r"queue: [01] pending, 0 dead, [01] processed", ready["STATUS"]), ready
    assert http_json(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ready"})
    assert not port_answers(unused_port)  # the inherited socket replaced --port
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    listened = [line for line in lines if line["event"] == "listening"]
    assert len(listened) == 1, listened
    assert listened[0]["inherited"] is True
    assert listened[0]["sockets"] == [f"http://127.0.0.1:{port}"]
    proc.send_signal(signal.SIGTERM)  # systemd-socket-activate exec'd into the daemon
    notify_socket.wait_for(lambda m: m.get("STOPPING") == "1")
    assert proc.wait(30) == 0




@pytest.mark.slow
def test_journald_priorities_and_ids_from_a_real_daemon(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    log = tmp_path / "journal-stream"
    with log.open("ab") as out:
        st = os.fstat(out.fileno())
        # What systemd sets when stdout is the journal's stream: then `<N>` prefixes.
        env = serve_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--handler", "log",
             "--handler", "tests.support.handlers:bury"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    processes.append(proc)

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()  # it exited: no point waiting
        return port_answers(port)

    wait_until(answers, "the daemon listens")
    status, _ = http_json(f"http://127.0.0.1:{port}/v1/events", data=b'[{"a": 1}, {"a": 2}]')
    assert status == 202
    status, _ = http_json(f"http://127.0.0.1:{port}/v1/events", data=b"{broken")
    assert status == 400
    wait_until(lambda: http_json(f"http://127.0.0.1:{port}/v1/queue")[1]["dead"] == 2,
               "both events dead-lettered")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    entries: list[tuple[int, dict[str, Any]]] = []
    for line in log.read_text().splitlines():
        assert re.match(r"<[0-7]>\{", line), line  # every line, stdlib's too
        entries.append((int(line[1]), json.loads(line[3:])))
    # `journalctl -p err` keeps priorities 0..3: the dead letters, each with its seq.
    errors = [e for prio, e in entries if prio <= 3]
    assert [(e["event"], e["seq"]) for e in errors] == [("job_dead_lettered", 1),
                                                         ("job_dead_lettered", 2)]
    jobs = [e for prio, e in entries if e["event"] == "job"]
    assert [(e["seq"], e["payload"]) for e in jobs] == [(1, {"a": 1}), (2, {"a": 2})]
    assert all(prio == 6 for prio, e in entries if e["event"] == "job")
    rejected = [(prio, e) for prio, e in entries if e["event"] == "request_rejected"]
    assert [(prio, e["status"], e["error"]) for prio, e in rejected] == [
        (6, 400, "invalid_json")], rejected
    assert rejected[0][1]["request_id"]


# -- the units booted for real under systemd-nspawn ----------------------------------------




def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def nspawn_skip_reason() -> str | None:
    """Why the units cannot be booted here, or None when they can be tried."""
    if os.geteuid() != 0:
        return "needs root: systemd-nspawn boots a container"
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        return "systemd-nspawn not installed (apt-get install -y systemd-container)"
    if Path("/sbin/init").resolve().name != "systemd":
        return "the host's / has no systemd to boot (/sbin/init is not systemd)"
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        return "no /usr/bin/python3 for the container's venv"
    version = subprocess.run([str(system_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=False).stdout.strip()
    if version != str(sys.version_info[:2]):
        return (f"/usr/bin/python3 is {version}, this interpreter {sys.version_info[:2]}: the "
                "container borrows this interpreter's packages, which need the same version")
    return None


class Container:
    """The host's own OS booted with systemd-nspawn --volatile=yes (host /usr, tmpfs rest)."""

    def __init__(self, tmp_path: Path, binds: dict[Path, str]) -> None:
        self.log = tmp_path / "nspawn.log"
        self.binds = binds
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self) -> None:
        """Boot; returns once the container's systemd runs (or skips, saying why)."""
        binds = [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no",
                 "--keep-unit", "--console=pipe", "-q", *binds, "-b"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        state = ""
        for _ in range(600):  # bounded: 60 s
            if self.proc.poll() is not None:
                pytest.skip("systemd-nspawn cannot boot a container here: "
                            + self.log.read_text(errors="replace")[-500:])
            if not self.leader:
                kids = _children(self.proc.pid)
                self.leader = kids[0] if kids else 0
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in {"running", "degraded"}:
                    return
            time.sleep(0.1)
        pytest.skip(f"the container's systemd did not finish booting in 60 s (state {state!r})")

    def run(self, *cmd: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "--", *cmd],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            journal = subprocess.run(
                ["nsenter", "-t", str(self.leader), "-m", "-p", "--", "journalctl",
                 "-u", "collector", "--no-pager", "-n", "40"],
                capture_output=True, text=True, timeout=30, check=False,
            ).stdout
            raise AssertionError(f"{cmd}: {result.returncode} {result.stderr}\n{journal}")
        return result

    def show(self, *props: str) -> dict[str, str]:
        """`systemctl show collector -p ...` as a dict."""
        out = self.run("systemctl", "show", "collector.service",
                       *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        """Power the container off (kill it if it will not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container to halt
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _post(port: int, token: str, body: bytes) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def _queue(port: int, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/queue",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        numbers: dict[str, Any] = json.loads(resp.read())
        return numbers


@pytest.mark.slow
def test_units_boot_for_real_under_nspawn(tmp_path: Path) -> None:
    reason = nspawn_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    import sysconfig

    deps = Path(sysconfig.get_paths()["purelib"])
    port = free_port()
    token = "nspawn-token-5f2a"
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "token").write_text(token + "\n")
    (prep / "dropin.conf").write_text(
        "[Service]\n"
        "WatchdogSec=2s\nTimeoutAbortSec=2s\nRestartSec=500ms\n"
        f"Environment=COLLECTOR_SERVER_PORT={port} "
        "COLLECTOR_WORKER_HANDLERS=tests.support.handlers:slow "
        "COLLECTOR_SERVER_SHUTDOWN_TIMEOUT=5 COLLECTOR_QUEUE_DURABILITY=normal\n"
    )
    container = Container(tmp_path, {REPO: "/opt/collector/src", deps: "/opt/collector/deps",
                                     prep: "/prep", UNITS: "/units"})
    try:
        container.start()
        # Install the way scripts/install.sh lays it out; the venv borrows this
        # interpreter's packages instead of pip (the container need not reach PyPI).
        py = "/opt/collector/venv/bin/python"
        container.run("/usr/bin/python3", "-m", "venv", "--without-pip", "/opt/collector/venv")
        container.run(py, "-c", (
            "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'borrowed.pth')"
            ".write_text('/opt/collector/src\\n/opt/collector/deps\\n')"))
        container.run("sh", "-c", (
            f"printf '#!{py}\\nimport sys\\nfrom collector.cli import main\\n"
            "sys.exit(main())\\n' > /opt/collector/venv/bin/collector && "
            "chmod 755 /opt/collector/venv/bin/collector && "
            "mkdir -p /etc/collector /etc/systemd/system/collector.service.d && "
            "cp /units/collector.toml /etc/collector/collector.toml && "
            "install -m 600 /prep/token /etc/collector/token && "
            "cp /units/collector.service /units/collector.socket /etc/systemd/system/ && "
            "cp /prep/dropin.conf /etc/systemd/system/collector.service.d/test.conf && "
            "systemctl daemon-reload"))

        # Type=notify: `systemctl start` returns once READY=1 came, so the port answers.
        container.run("systemctl", "start", "collector.service")
        assert port_answers(port)
        shown = container.show("ActiveState", "StatusText", "MainPID", "NRestarts")
        assert shown["ActiveState"] == "active"
        assert shown["StatusText"] == "queue: 0 pending, 0 dead, 0 processed", shown
        first_pid = shown["MainPID"]

        # SIGSTOP: no more pings; the watchdog aborts, then kills, and systemd restarts it.
        container.run("kill", "-STOP", first_pid)

        def restarted() -> bool:
            nonlocal shown
            shown = container.show("ActiveState", "MainPID", "NRestarts", "SubState")
            return (shown["NRestarts"] != "0" and shown["ActiveState"] == "active"
                    and shown["SubState"] == "running")

        wait_until(restarted, "systemd restarts the stopped daemon", timeout=60)
        assert shown["NRestarts"] == "1", shown
        assert shown["MainPID"] != first_pid
        journal = container.run("journalctl", "-u", "collector", "--no-pager").stdout
        assert "Watchdog timeout" in journal

        # Priorities reach the journal: `journalctl -p err` shows the dead letter, with its seq.
        post = functools.partial(_post, port, token)
        post(b'{"fail": true}')
        errors = ""

        def dead_lettered() -> bool:
            nonlocal errors
            errors = container.run("journalctl", "-u", "collector", "-p", "err", "--no-pager",
                                   "-o", "cat").stdout
            return "job_dead_lettered" in errors

        wait_until(dead_lettered, "the dead letter in `journalctl -p err`", timeout=30)
        lines = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
        assert [(e["event"], e["seq"]) for e in lines] == [("job_dead_lettered", 1)]

        # A clean drain on `systemctl stop`: the job in flight finishes, the rest waits.
        post(b'[{"n":1},{"n":2},{"n":3}]')
        wait_until(lambda: _queue(port, token)["in_flight"] == 1,
                   "the worker amid the first of the three jobs")
        container.run("systemctl", "stop", "collector.service")
        shown = container.show("ActiveState", "Result", "ExecMainStatus")
        assert (shown["ActiveState"], shown["Result"], shown["ExecMainStatus"]) == (
            "inactive", "success", "0")
        journal = container.run("journalctl", "-u", "collector", "--no-pager", "-o", "cat").stdout
        closed = [json.loads(line) for line in journal.splitlines()
                  if line.startswith("{") and '"queue_closed"' in line]
        assert closed, journal[-2000:]
        assert closed[-1]["pending"] == 2  # the first job done, the others kept
    finally:
        container.stop()


# -- the unit files --------------------------------------------------------------------------


def test_units_verify_and_rate_1_5_or_lower() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not found: apt-get install -y systemd")
    result = subprocess.run(["bash", str(UNITS / "check-units.sh")], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rating = result.stdout.strip().splitlines()[-1]
    assert "Overall exposure level for collector.service" in rating
    assert float(rating.split(":")[1].split()[0]) <= 1.5


def test_service_stop_timeout_covers_a_full_drain() -> None:
    from collector.config import ServerSettings

    unit = (UNITS / "collector.service").read_text()
    values = dict(line.split("=", 1) for line in unit.splitlines()
                  if "=" in line and not line.startswith("#"))
    stop_s = float(values["TimeoutStopSec"].removesuffix("s"))
    # Requests drain, then the current job: up to 2 x shutdown_timeout, plus the close.
    assert stop_s > 2 * ServerSettings().shutdown_timeout + 5
    assert values["Type"] == "notify"
    assert "WatchdogSec" in values


def test_the_installed_config_template_loads_as_the_defaults() -> None:
    from collector.config import load_settings

    template = load_settings(UNITS / "collector.toml", environ={})
    assert template == load_settings(None, environ={})  # every line commented: defaults
    text = (UNITS / "collector.toml").read_text()
    for section in ("[server]", "[queue]", "[worker]", "[log]"):
        assert section in text
