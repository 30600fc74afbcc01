"""Every path of `replay`, `record` and `bridge` (and `export -o`) ends in one clear line.

Each test runs the real `collector` command in a subprocess and checks its exit code,
the one line on stderr and that no traceback appears (docs/cli.md, "Exit codes"): 0
success or a deliberate stop of a command that runs until stopped (bridge, record), 1
failure, 2 usage error, 130/143 a replay interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.model import cli_env, one_line, run_cli
from tests.support.paths import CAPTURE_STREAM
from tests.support.server import ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]
TOKEN = "right-token"
MESSAGES = b'{"Event":"UpdateState","Data":{"n":1}}{"Event":"UpdateState","Data":{"n":2}}'


@pytest.fixture
def server(server_process: ServerFactory) -> ServerProcess:
    """A real collector that wants TOKEN."""
    proc = server_process(env={"COLLECTOR_SERVER_TOKEN": TOKEN})
    proc.start()
    return proc


class TinyGame:
    """A Stats API socket on loopback: each connection gets `data`, then is closed or held
    open until the test ends."""

    def __init__(self, data: bytes, *, hold: bool = True) -> None:
        self._data = data
        self._hold = hold
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                client.sendall(self._data)
            if self._hold:
                self._clients.append(client)
            else:
                client.close()

    def close(self) -> None:
        self._sock.close()
        for client in self._clients:
            client.close()
        self._thread.join(5)


@pytest.fixture
def game() -> Iterator[TinyGame]:
    tiny = TinyGame(MESSAGES)
    yield tiny
    tiny.close()


def failed(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line of a command that ended with `code`, without its prefix."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout, result.stdout
    line = one_line(result.stderr)
    assert line.startswith("collector: error: "), line
    return line.removeprefix("collector: error: ")


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """argparse's usage lines end with one line that says what is wrong; exit 2."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.splitlines()[-1]
    assert ": error: " in last, result.stderr
    return last


def log_events(stdout: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.startswith("{")]


class Running:
    """A `collector` command in the background, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.out = tmp_path / f"out-{time.monotonic_ns()}.log"
        self.err = self.out.with_suffix(".err")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "collector", *args],
                                         cwd=tmp_path, env=cli_env(), stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            assert self.proc.poll() is None, (self.stdout(), self.stderr())
            assert time.monotonic() < deadline, f"no {text!r} in {self.stdout()}"
            time.sleep(0.05)

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        started.append(Running(tmp_path, *args))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()


# -- replay: the collector refuses, or cannot be reached -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("token", [["--token", "wrong-token"], []], ids=["wrong", "none"])
def test_replay_with_a_wrong_token_ends_at_once(server: ServerProcess, tmp_path: Path,
                                                token: list[str]) -> None:
    started = time.monotonic()
    result = run_cli("replay", str(CAPTURE_STREAM), "--to", server.url, "--fast", *token,
                     cwd=tmp_path)
    line = failed(result, 1)
    assert line == (f"{server.url}/v1/events answered HTTP 401 Unauthorized (unauthorized: "
                    "missing or wrong bearer token); check --token or --token-file")
    assert time.monotonic() - started < 20  # not retried at the backoff cap


@pytest.mark.slow
def test_replay_to_a_wrong_path_ends_at_once(server: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = run_cli("replay", str(CAPTURE_STREAM), "--to", f"{server.url}/nope", "--fast",
                     "--token-file", str(token_file), cwd=tmp_path)
    line = failed(result, 1)
    assert line.startswith(f"{server.url}/nope/v1/events answered HTTP 404 Not Found")
    assert line.endswith("; check --to")


def test_replay_to_an_unreachable_collector_gives_up(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    result = run_cli("replay", str(CAPTURE_STREAM), "--to", f"http://127.0.0.1:{port}",
                     "--fast", "--give-up-after", "1.5", "--max-backoff", "0.5", cwd=tmp_path)
    line = failed(result, 1)
    assert line == (f"cannot connect to http://127.0.0.1:{port} (connection refused); "
                    "gave up after 1.5 s (--give-up-after)")
    assert time.monotonic() - started < 20
    # The retry lines say it plainly too, not aiohttp's words.
    retries = [e for e in log_events(result.stdout) if e["event"] == "post_failed"]
    assert retries
    assert {e["error"] for e in retries} == {
        f"cannot connect to http://127.0.0.1:{port} (connection refused)"}
    assert "Connect call failed" not in result.stdout
    assert "ssl:default" not in result.stdout


def test_the_bridge_says_plainly_why_it_retries_and_keeps_retrying(
    tmp_path: Path, game: TinyGame, running: Callable[..., Running]
) -> None:
    port = free_port()
    bridge = running("bridge", "--game", f"127.0.0.1:{game.port}", "--to",
                     f"http://127.0.0.1:{port}", "--spool-dir", str(tmp_path / "spool"),
                     "--max-backoff", "0.2", "--batch-max-delay", "0.05")
    bridge.wait_for('"attempt":5,')  # still at it: the bridge retries forever
    assert bridge.stop(signal.SIGINT) == 0
    assert bridge.stderr() == ""
    retries = [e for e in log_events(bridge.stdout()) if e["event"] == "post_failed"]
    assert {e["error"] for e in retries} == {
        f"cannot connect to http://127.0.0.1:{port} (connection refused)"}
    assert "Connect call failed" not in bridge.stdout()
    stopped = log_events(bridge.stdout())[-2:]
    assert [e["event"] for e in stopped] == ["bridge_stopped", "spool_closed"]
    assert stopped[0]["spooled"] == 2  # what the game sent waits in the spool


class Answering:
    """An HTTP server on loopback that answers every POST with `status` and `body`."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def test_replay_to_a_failing_server_gives_up_naming_it(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html>\n<html><body>\n<h1>Service Unavailable</h1>\n</body></html>\n"
    busy = Answering(503, page, "text/html")
    try:
        result = run_cli("replay", str(CAPTURE_STREAM), "--to", busy.url, "--fast",
                         "--give-up-after", "1", "--max-backoff", "0.3", cwd=tmp_path)
    finally:
        busy.close()
    assert failed(result, 1) == (
        f"{busy.url}/v1/events answered HTTP 503 Service Unavailable (Service Unavailable); "
        "gave up after 1 s (--give-up-after)")


def test_replay_whose_messages_are_refused_says_how_many(tmp_path: Path) -> None:
    refusing = Answering(422, b'{"error": "invalid_event", "detail": "no Event field"}',
                         "application/json")
    try:
        result = run_cli("replay", str(CAPTURE_STREAM), "--to", refusing.url, "--fast",
                         cwd=tmp_path)
    finally:
        refusing.close()
    line = failed(result, 1)
    assert line.startswith(f"the collector refused all 438 messages of {CAPTURE_STREAM}: "
                           "HTTP 422 ")  # the phrase changed in Python 3.13
    assert line.endswith(" (invalid_event: no Event field)")


# -- replay: the recording ------------------------------------------------------------------


def test_replay_of_a_file_without_messages_fails(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Not a recording\n\nJust [text](http://example.com).\n")
    result = run_cli("replay", "README.md", "--to", f"http://127.0.0.1:{free_port()}",
                     cwd=tmp_path)
    size = readme.stat().st_size
    assert failed(result, 1) == (
        f"no Stats API messages in README.md (its {size} bytes hold no JSON object)")

    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = run_cli("replay", "empty.jsonl", "--to", "http://127.0.0.1:9", cwd=tmp_path)
    assert failed(result, 1) == "no Stats API messages in empty.jsonl (the file is empty)"


@pytest.mark.slow
def test_replay_of_a_partly_garbage_file_says_how_many_bytes_it_dropped(
    server: ServerProcess, tmp_path: Path
) -> None:
    part = tmp_path / "part.stream"
    part.write_bytes(b'{"n": 1}garbage!{"n": 2}')
    result = run_cli("replay", str(part), "--to", server.url, "--token", TOKEN, "--fast",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = log_events(result.stdout)
    done = next(e for e in events if e["event"] == "replay_done")
    assert (done["messages"], done["sent"], done["dropped_bytes"]) == (2, 2, 8)
    assert events[-1]["event"] == "recording_has_garbage"
    assert events[-1]["dropped_bytes"] == 8


def test_replay_names_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    to = ["--to", "http://127.0.0.1:9"]
    assert failed(run_cli("replay", "nope.stream", *to, cwd=tmp_path), 2) == (
        "nope.stream: no such file")
    (tmp_path / "folder").mkdir()
    assert failed(run_cli("replay", "folder", *to, cwd=tmp_path), 2) == (
        "folder is a folder, not a recording")
    os.mkfifo(tmp_path / "fifo")  # would block a reader: refused before it is opened
    assert failed(run_cli("replay", "fifo", *to, cwd=tmp_path), 2) == (
        "fifo is not a regular file (a recording is a file)")


def test_replay_of_an_unreadable_file(tmp_path: Path, as_a_user: tuple[str, ...]) -> None:
    secret = tmp_path / "secret.stream"
    secret.write_bytes(MESSAGES)
    secret.chmod(0)
    result = run_cli("replay", str(secret), "--to", "http://127.0.0.1:9", cwd=tmp_path,
                     prefix=as_a_user)
    assert failed(result, 2) == f"{secret}: cannot read it (permission denied)"


def test_the_replay_bar_shows_what_the_collector_took_not_what_was_read(
    tmp_path: Path
) -> None:
    """On a terminal: a collector that takes nothing leaves the bar at 0 %, "sent 0"."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "replay", str(CAPTURE_STREAM), "--to",
         f"http://127.0.0.1:{free_port()}", "--fast", "--give-up-after", "1",
         "--max-backoff", "0.3"],
        cwd=tmp_path, env=cli_env(), stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    screen = b""
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            screen += data
    finally:
        os.close(master)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert one_line(err).startswith("collector: error: cannot connect to")
    bars = [part for part in screen.decode(errors="replace").split("\r")
            if part.startswith("player-capture.stream [")]
    assert bars, screen
    assert not any("100.0%" in bar for bar in bars), bars
    assert "  0.0% | read 438 | sent 0 |" in bars[-1]


# -- record -----------------------------------------------------------------------------------


def test_record_checks_its_output_before_it_waits_for_the_game(tmp_path: Path) -> None:
    game = ["--game", f"127.0.0.1:{free_port()}"]  # no game: record would wait for one
    result = run_cli("record", "-o", str(tmp_path / "missing" / "x.stream"), *game,
                     cwd=tmp_path, timeout=20)
    assert failed(result, 1) == (
        f"cannot create {tmp_path}/missing/x.stream: no such folder {tmp_path}/missing")
    assert result.stdout == ""  # nothing done, no game looked for

    result = run_cli("record", "-o", str(tmp_path), *game, cwd=tmp_path, timeout=20)
    assert failed(result, 1) == f"{tmp_path} is a folder; name a file in it"

    earlier = tmp_path / "match.stream"
    earlier.write_bytes(b"an earlier match")
    result = run_cli("record", "-o", "match.stream", *game, cwd=tmp_path, timeout=20)
    assert failed(result, 1) == "match.stream exists; choose another file"
    assert earlier.read_bytes() == b"an earlier match"

    result = run_cli("record", "-o", "/proc/nope/x.stream", *game, cwd=tmp_path, timeout=20)
    assert failed(result, 1) == "cannot create /proc/nope/x.stream: no such folder /proc/nope"


def test_record_into_a_folder_it_may_not_write(tmp_path: Path,
                                               as_a_user: tuple[str, ...]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run_cli("record", "-o", str(locked / "x.stream"), "--game",
                     f"127.0.0.1:{free_port()}", cwd=tmp_path, prefix=as_a_user, timeout=20)
    assert failed(result, 1) == (
        f"cannot create {locked}/x.stream: no permission to write in {locked}")
    assert list(locked.iterdir()) == []


def test_record_duration_bounds_the_wait_for_the_game(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    result = run_cli("record", "-o", "x.stream", "--game", f"127.0.0.1:{port}",
                     "--duration", "1", cwd=tmp_path, timeout=30)
    assert failed(result, 1) == (
        f"no game at 127.0.0.1:{port} within 1 s (connection refused); nothing recorded")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "x.stream").exists()  # no empty file left behind
    assert "Errno" not in result.stdout


def test_record_of_a_game_that_sends_nothing_fails(tmp_path: Path) -> None:
    silent = TinyGame(b"", hold=False)
    try:
        result = run_cli("record", "-o", "x.stream", "--game", f"127.0.0.1:{silent.port}",
                         cwd=tmp_path, timeout=30)
    finally:
        silent.close()
    assert failed(result, 1) == (f"the game at 127.0.0.1:{silent.port} sent nothing before "
                                 "it closed the connection; nothing recorded")
    assert not (tmp_path / "x.stream").exists()


# -- a deliberate stop ------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_record_stopped_while_recording_exits_0_and_keeps_the_file(
    tmp_path: Path, game: TinyGame, running: Callable[..., Running], signum: int
) -> None:
    rec = running("record", "-o", "x.stream", "--game", f"127.0.0.1:{game.port}")
    rec.wait_for('"recording"')  # the file is created before the game is looked for
    deadline = time.monotonic() + 30
    while (tmp_path / "x.stream").stat().st_size < len(MESSAGES):
        assert time.monotonic() < deadline, rec.stdout()
        time.sleep(0.05)
    assert rec.stop(signum) == 0
    assert rec.stderr() == ""
    assert (tmp_path / "x.stream").read_bytes() == MESSAGES
    recorded = log_events(rec.stdout())[-1]
    assert (recorded["event"], recorded["messages"], recorded["interrupted"]) == (
        "recorded", 2, True)


def test_record_stopped_while_waiting_for_the_game_exits_0(
    tmp_path: Path, running: Callable[..., Running]
) -> None:
    rec = running("record", "-o", "x.stream", "--game", f"127.0.0.1:{free_port()}")
    rec.wait_for('"game_unreachable"')
    assert rec.stop(signal.SIGINT) == 0
    assert rec.stderr() == ""
    assert log_events(rec.stdout())[-1]["event"] == "record_stopped"
    assert not (tmp_path / "x.stream").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_the_bridge_stopped_by_a_signal_exits_0(
    tmp_path: Path, running: Callable[..., Running], signum: int
) -> None:
    bridge = running("bridge", "--game", f"127.0.0.1:{free_port()}", "--to",
                     "http://127.0.0.1:9", "--spool-dir", str(tmp_path / "spool"))
    bridge.wait_for('"game_unreachable"')
    assert bridge.stop(signum) == 0
    assert bridge.stderr() == ""
    assert "bridge_stopped" in bridge.stdout()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["INT", "TERM"])
def test_an_interrupted_replay_says_how_far_it_got(
    server: ServerProcess, running: Callable[..., Running], signum: signal.Signals, code: int
) -> None:
    replay = running("replay", str(CAPTURE_STREAM), "--to", server.url, "--token", TOKEN,
                     "--source", "stopped-replay")  # at 62 messages per second: 7 s
    replay.wait_for('"replay_started"')
    time.sleep(1.0)
    assert replay.stop(signum) == code
    line = one_line(replay.stderr())
    assert line.startswith(f"collector: interrupted by {signum.name}: the collector took ")
    assert line.endswith(f"messages read from {CAPTURE_STREAM} (source stopped-replay)")


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["replay", "x", "--to", "localhost:8765"],
     "--to: not an http(s) URL: 'localhost:8765' (like http://localhost:8765)"),
    (["replay", "x", "--to", "http://"], "--to: no host in 'http://' (like http://HOST:PORT)"),
    (["replay", "x", "--to", "http://host:99999"],
     "--to: not a valid URL: 'http://host:99999' (port out of range 0-65535)"),
    (["replay", "x", "--to", "http://h", "--token", " "], "--token is empty"),
    (["replay", "x", "--to", "http://h", "--source", "a\tb"],
     "--source: 1 to 256 printable characters expected, not 'a\\tb'"),
    (["replay", "x", "--to", "http://h", "--source", "x" * 300],
     "--source: 1 to 256 printable characters expected, 300 given"),
    (["replay", "x", "--to", "http://h", "--token", "a\x01b"],
     "--token: the token holds a space, a line break or a control character (one line, "
     "no spaces, expected)"),
    (["bridge", "--to", "http://h", "--game", "host:99999"],
     "--game: not a port number: 99999"),
    (["bridge", "--to", "http://h", "--game", "host:"], "--game: not HOST:PORT: 'host:'"),
    (["bridge"], "--to URL is required (the collector, e.g. http://homeserver:8765)"),
    (["record", "-o", "x", "--game", "host:99999"], "--game: not a port number: 99999"),
    (["record", "-o", "x", "--timestamps"],
     "--timestamps needs --jsonl (a raw recording is the socket's bytes)"),
], ids=lambda value: "-".join(value) if isinstance(value, list) else "")
def test_wrong_values_are_usage_errors(tmp_path: Path, args: list[str],
                                       expected: str) -> None:
    (tmp_path / "x").write_bytes(MESSAGES)
    args = [*args, "--spool-dir", str(tmp_path / "spool")] if args[0] == "bridge" else args
    assert failed(run_cli(*args, cwd=tmp_path, timeout=20), 2) == expected
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["replay", "x", "--to", "http://h", "--rate", "0"], "--rate: must be a positive number"),
    (["replay", "x", "--to", "http://h", "--rate", "nan"], "--rate: must be a positive number"),
    (["replay", "x", "--to", "http://h", "--speed", "-1"],
     "--speed: must be a positive number"),
    (["replay", "x", "--to", "http://h", "--give-up-after", "0"],
     "--give-up-after: must be a positive number"),
    (["replay", "x", "--to", "http://h", "--speed", "2", "--fast"], "not allowed with"),
    (["record", "-o", "x", "--duration", "inf"], "--duration: must be a positive number"),
    (["bridge", "--to", "http://h", "--max-backoff", "-5"],
     "--max-backoff: must be a positive number"),
], ids=lambda value: "-".join(value) if isinstance(value, list) else "")
def test_values_out_of_range_are_refused_by_the_parser(tmp_path: Path, args: list[str],
                                                        expected: str) -> None:
    assert expected in usage_error(run_cli(*args, cwd=tmp_path, timeout=20))


def test_token_files_that_cannot_be_used(tmp_path: Path) -> None:
    def token_file(path: Path) -> str:
        result = run_cli("replay", str(CAPTURE_STREAM), "--to", "http://127.0.0.1:9",
                         "--token-file", str(path), cwd=tmp_path, timeout=20)
        return failed(result, 2)

    assert token_file(tmp_path / "none") == f"--token-file: no such file {tmp_path}/none"
    assert token_file(tmp_path) == f"--token-file: {tmp_path} is a folder, not a token file"
    (tmp_path / "empty").write_text("  \n")
    assert token_file(tmp_path / "empty") == f"--token-file: {tmp_path}/empty is empty"
    (tmp_path / "two").write_text("one\ntwo\n")
    assert token_file(tmp_path / "two") == (
        f"--token-file: {tmp_path}/two: the token holds a space, a line break or a control "
        "character (one line, no spaces, expected)")


def test_show_dead_does_not_create_a_spool(tmp_path: Path) -> None:
    result = run_cli("bridge", "--show-dead", "--spool-dir", str(tmp_path / "typo"),
                     cwd=tmp_path, timeout=20)
    assert failed(result, 1) == (f"no bridge spool in {tmp_path}/typo (the bridge never ran "
                                 "with this --spool-dir)")
    assert not (tmp_path / "typo").exists()


# -- export -o ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("output", "expected"), [
    ("/proc/nope/x", "cannot create /proc/nope/x: no such folder /proc/nope"),
    ("{tmp}", "{tmp} is a folder; name a file in it"),
    ("{tmp}/taken", "{tmp}/taken exists; choose another file"),
    ("{tmp}/taken/x", "cannot create {tmp}/taken/x: {tmp}/taken is not a folder"),
], ids=["no-folder", "a-folder", "exists", "under-a-file"])
def test_export_checks_its_output_before_asking_the_daemon(
    tmp_path: Path, output: str, expected: str
) -> None:
    (tmp_path / "taken").write_text("an earlier export\n")
    # No daemon answers there: the file is checked first, so the line is about the file.
    result = run_cli("export", "--url", f"http://127.0.0.1:{free_port()}", "-o",
                     output.format(tmp=tmp_path), cwd=tmp_path, timeout=20)
    assert failed(result, 1) == expected.format(tmp=tmp_path)
    assert (tmp_path / "taken").read_text() == "an earlier export\n"
