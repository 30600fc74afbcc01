"""Settings (defaults < TOML file < environment < flags) and the `collector serve` command."""

from __future__ import annotations

import os
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

from collector.config import load_settings
from collector.errors import ConfigError
from collector.handlers import builtin_handlers
from tests.support.model import one_line
from tests.support.paths import REPO
from tests.support.server import ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any collector or systemd setting."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COLLECTOR_")
           and k not in {"STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m collector ...` to completion (a server that starts would time out)."""
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` and return the path."""
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_collector_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process load_settings() must not see the developer's own settings."""
    for name in list(os.environ):
        if name.startswith("COLLECTOR_") or name in {"STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"}:
            monkeypatch.delenv(name)


# -- load_settings ------------------------------------------------------------------------


def test_settings_from_toml_file(tmp_path: Path) -> None:
    config = write(tmp_path / "collector.toml", """
[server]
host = "192.0.2.7"
port = 9100
data_dir = "/srv/collector"
max_body_bytes = 65536
max_depth = 8
shutdown_timeout = 3

[queue]
durability = "normal"
max_pending = 500
ack_interval_ms = 0
idempotency_ttl_hours = 24

[worker]
handlers = ["noop", "log"]
max_attempts = 3
backoff_base = 0.25
backoff_cap = 4
handler_timeout = 12.5
""")
    s = load_settings(config, environ={})
    assert (s.server.host, s.server.port) == ("192.0.2.7", 9100)
    assert s.server.data_dir == Path("/srv/collector")
    assert (s.server.max_body_bytes, s.server.max_depth) == (65536, 8)
    assert s.server.shutdown_timeout == 3.0
    assert (s.queue.durability, s.queue.max_pending) == ("normal", 500)
    assert (s.queue.ack_interval_ms, s.queue.idempotency_ttl_hours) == (0, 24)
    assert s.worker.handlers == ("noop", "log")
    assert (s.worker.max_attempts, s.worker.backoff_base) == (3, 0.25)
    assert (s.worker.backoff_cap, s.worker.handler_timeout) == (4.0, 12.5)


def test_embedded_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 8765
    assert s.server.data_dir == Path("collector-data")
    assert s.server.token is None
    assert s.token_value() is None
    assert s.queue.durability == "full"
    assert s.worker.handlers
    assert set(s.worker.handlers) <= set(builtin_handlers())


def test_default_data_dir_is_state_directory(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert load_settings().server.data_dir == tmp_path / "state"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", '[server]\nport = 1234\nhost = "10.0.0.1"\n'
                                        '[queue]\ndurability = "full"\n')
    s = load_settings(config, environ={
        "COLLECTOR_SERVER_PORT": "9000",
        "COLLECTOR_QUEUE_DURABILITY": "normal",
        "COLLECTOR_WORKER_HANDLERS": "noop",
        "COLLECTOR_WORKER_BACKOFF_BASE": "0.75",
        "COLLECTOR_SERVER_DATA_DIR": str(tmp_path / "d"),
    })
    assert s.server.port == 9000
    assert s.server.host == "10.0.0.1"  # not overridden: the file's value stays
    assert s.queue.durability == "normal"
    assert s.worker.handlers == ("noop",)
    assert s.worker.backoff_base == 0.75
    assert s.server.data_dir == tmp_path / "d"


def test_flags_override_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[server]\nport = 1234\n")
    s = load_settings(config, environ={"COLLECTOR_SERVER_PORT": "9000"},
                      overrides={"server.port": 9001, "worker.handlers": ("noop",)})
    assert s.server.port == 9001
    assert s.worker.handlers == ("noop",)


def test_token_from_the_environment(tmp_path: Path) -> None:
    s = load_settings(environ={"COLLECTOR_SERVER_TOKEN": "env-secret"})
    assert s.token_value() == "env-secret"
    assert "env-secret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("[server]\nprot = 1\n", "prot", id="unknown-key"),
        pytest.param("[queue]\nmax_pendin = 1\n", "max_pendin", id="unknown-queue-key"),
        pytest.param("[sever]\nport = 1\n", "sever", id="unknown-section"),
        pytest.param('[server]\nport = "80"\n', "server.port", id="string-for-int"),
        pytest.param("[server]\nport = true\n", "server.port", id="bool-for-int"),
        pytest.param("[server]\nport = 1.5\n", "server.port", id="float-for-int"),
        pytest.param("[server]\nport = 70000\n", "server.port", id="port-out-of-range"),
        pytest.param("[server]\nhost = 1\n", "server.host", id="int-for-string"),
        pytest.param('[worker]\nhandlers = "log"\n', "worker.handlers", id="string-for-list"),
        pytest.param('[queue]\ndurability = "fast"\n', "queue.durability", id="bad-choice"),
        pytest.param('[worker]\nbackoff_base = "x"\n', "worker.backoff_base",
                     id="string-for-float"),
        pytest.param("server = 1\n", "server", id="section-not-a-table"),
    ],
)
def test_bad_config_file_is_a_config_error(tmp_path: Path, text: str, named: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", "[server\nport = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml") as info:
        load_settings(config, environ={})
    assert "\n" not in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no-such\.toml"):
        load_settings(tmp_path / "no-such.toml", environ={})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        pytest.param({"COLLECTOR_SERVER_PORT": "abc"}, "COLLECTOR_SERVER_PORT", id="bad-int"),
        pytest.param({"COLLECTOR_SERVER_PORT": "99999"}, "port", id="port-out-of-range"),
        pytest.param({"COLLECTOR_QUEUE_DURABILITY": "fast"}, "COLLECTOR_QUEUE_DURABILITY",
                     id="bad-choice"),
        pytest.param({"COLLECTOR_WORKER_HANDLER_TIMEOUT": "soon"},
                     "COLLECTOR_WORKER_HANDLER_TIMEOUT", id="bad-float"),
        pytest.param({"COLLECTOR_SERVER_PROT": "1"}, "COLLECTOR_SERVER_PROT",
                     id="unknown-key"),
        pytest.param({"COLLECTOR_SEVER_PORT": "1"}, "COLLECTOR_SEVER_PORT",
                     id="unknown-section"),
        pytest.param({"COLLECTOR_PORT": "1"}, "COLLECTOR_PORT", id="no-section"),
    ],
)
def test_bad_environment_is_a_config_error(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    s = load_settings(environ={"COLLECTOR_SERVER_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"nope"):
        s.token_value()


# -- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("[server]\nprot = 1\n", "prot", id="unknown-key"),
        pytest.param("[sever]\nport = 1\n", "sever", id="unknown-section"),
        pytest.param('[server]\nport = "80"\n', "server.port", id="wrong-type"),
        pytest.param('[queue]\ndurability = "fast"\n', "queue.durability", id="bad-choice"),
        pytest.param("[server\n", "bad.toml", id="invalid-toml"),
    ],
)
def test_cli_bad_config_file_exits_2_with_one_line(tmp_path: Path, text: str,
                                                   named: str) -> None:
    config = write(tmp_path / "bad.toml", text)
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2, result
    assert named in one_line(result.stderr)
    assert not (tmp_path / "data").exists()  # nothing started


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_cli("serve", "--config", str(missing), "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2, result
    assert str(missing) in one_line(result.stderr)


@pytest.mark.parametrize(
    "spec",
    ["no_such_module_xyz:handle", "tests.support.api:no_such_handler", "not-a-builtin",
     "tests.support.api:RECORDER"],
)
def test_cli_unknown_handler_exits_2(tmp_path: Path, spec: str) -> None:
    result = run_cli("serve", "--handler", spec, "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2, result
    assert spec in one_line(result.stderr)


@pytest.mark.parametrize(
    ("var", "value", "said"),
    [("COLLECTOR_SERVER_PORT", "eighty",
      "COLLECTOR_SERVER_PORT: expected an integer, got 'eighty'"),
     ("COLLECTOR_SERVER_PROT", "80",
      "environment variable COLLECTOR_SERVER_PROT: unknown setting"),
     ("COLLECTOR_SERVER_TOKEN_FILE", "/nonexistent/collector-token",
      "server.token_file: cannot read /nonexistent/collector-token: "
      "No such file or directory")],
)
def test_cli_bad_environment_exits_2(tmp_path: Path, var: str, value: str, said: str) -> None:
    result = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
                     cwd=tmp_path, env=clean_env(**{var: value}))
    assert result.returncode == 2, result
    assert one_line(result.stderr) == f"collector: error: {said}"


def _status(req: urllib.request.Request | str) -> int:
    """The HTTP status of one request to a real server."""
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


def _post(url: str, body: bytes) -> int:
    return _status(urllib.request.Request(url, data=body, method="POST",
                                          headers={"Content-Type": "application/json"}))


@pytest.mark.slow
def test_real_server_uses_file_env_and_flags(server_process: ServerFactory,
                                             tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[server]\nport = 1\nmax_body_bytes = 2048\n"
                                        '[worker]\nhandlers = ["no_such_module:x"]\n')
    server = server_process(
        args=["--config", str(config), "--handler", "noop"],
        env={"COLLECTOR_SERVER_PORT": "2"},
    )
    server.start()  # --port (a free port) wins over the environment and the file
    assert _status(f"{server.url}/readyz") == 200
    assert _status(f"{server.url}/healthz") == 200
    assert _post(f"{server.url}/v1/events", b'{"a": 1}') == 202
    # max_body_bytes came from the file
    assert _post(f"{server.url}/v1/events", b'{"a": "' + b"x" * 3000 + b'"}') == 413
    assert (server.data_dir / "queue.db").exists()


@pytest.mark.slow
def test_second_server_on_the_same_data_dir_is_refused(server_process: ServerFactory,
                                                       tmp_path: Path) -> None:
    first = server_process()
    first.start()
    result = run_cli("serve", "--handler", "noop", "--port", str(free_port()),
                     "--data-dir", str(first.data_dir), cwd=tmp_path)
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert str(first.data_dir) in line
    assert _status(f"{first.url}/readyz") == 200  # the first one is unharmed


@pytest.mark.slow
def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--handler", "noop", "--port", str(port),
                         "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode != 0
    assert str(port) in one_line(result.stderr)


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    """`collector serve --port P` alone (no data dir flag), run in tmp_path; killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", env["TEST_PORT"]],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Poll /readyz until 200; fail at once if the process exits, or after `timeout` s
    (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            if _status(f"{url}/readyz") == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}/readyz not 200 within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("state_directory", [True, False])
def test_serve_default_data_dir(bare_server: Any, tmp_path: Path,
                                state_directory: bool) -> None:
    port = str(free_port())
    extra = {"TEST_PORT": port}
    if state_directory:
        extra["STATE_DIRECTORY"] = str(tmp_path / "state")
    proc = bare_server(clean_env(**extra))
    _wait_ready(proc, f"http://127.0.0.1:{port}")
    expected = tmp_path / ("state" if state_directory else "collector-data")
    assert (expected / "queue.db").exists()
    other = tmp_path / ("collector-data" if state_directory else "state")
    assert not other.exists()
