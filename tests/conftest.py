"""Shared fixtures: settings on a tmp_path data dir, in-process apps, real server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from collector.config import Settings, load_settings
from collector.server.app import create_app

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURE_JSONL = FIXTURES / "rl-stats-api" / "player-capture.jsonl"
CAPTURE_STREAM = FIXTURES / "rl-stats-api" / "player-capture.stream"

SettingsFactory = Callable[..., Settings]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data dir for this test only."""
    return tmp_path / "data"


@pytest.fixture
def make_settings(data_dir: Path) -> SettingsFactory:
    """Settings on this test's data dir; keyword arguments are "section__key" overrides."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "server.data_dir": data_dir,
            "worker.handlers": ("noop",),
        }
        for name, value in overrides.items():
            section, _, key = name.partition("__")
            values[f"{section}.{key}"] = value
        return load_settings(environ={}, overrides=values)

    return factory


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: SettingsFactory) -> ClientFactory:
    """Start the real application (real SQLite in tmp_path) behind a test client."""

    async def factory(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(settings or make_settings(**overrides))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return factory


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A real `collector serve` in a subprocess, for durability tests (SIGKILL)."""

    def __init__(self, data_dir: Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.args = args or ["--handler", "noop"]
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 20.0) -> None:
        """Start the process and wait until /readyz answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")]
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        import urllib.error
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout} s: {self.output()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush; what is not on disk is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, *, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def server_process(data_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory of real server processes on this test's data dir; all are killed at the end."""
    started: list[ServerProcess] = []

    def factory(**kwargs: Any) -> ServerProcess:
        proc = ServerProcess(data_dir, **kwargs)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()


# -- no silent skips in CI ----------------------------------------------------------------
#: Skips that CI accepts, by test id prefix, each with the reason it cannot run on CI's
#: machine. Anything else that skips while CI=true fails the run: a test that does not
#: run guards nothing, and CI must say so rather than pass. `.ci/run` installs what the
#: skipping tests need (strace, e2fsprogs, systemd-container, systemd-sysv, ...).
ALLOWED_SKIPS_IN_CI: dict[str, str] = {}


def unexpected_skips(skipped: list[tuple[str, str]],
                     allowed: dict[str, str] = ALLOWED_SKIPS_IN_CI) -> list[tuple[str, str]]:
    """The (test id, reason) pairs of `skipped` that no prefix in `allowed` covers."""
    return [(nodeid, reason) for nodeid, reason in skipped
            if not any(nodeid.startswith(prefix) for prefix in allowed)]


class SkipGate:
    """Counts skipped tests; with CI=true, a skip not on ALLOWED_SKIPS_IN_CI fails the run."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
            self.skipped.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.strict and unexpected_skips(self.skipped) \
                and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.strict:
            return
        bad = unexpected_skips(self.skipped)
        if bad:
            terminalreporter.section("skipped in CI, not on ALLOWED_SKIPS_IN_CI: run failed",
                                     red=True)
            for nodeid, reason in bad:
                terminalreporter.write_line(f"{nodeid}: {reason}")
        else:
            terminalreporter.write_line(
                f"CI=true: every collected test ran ({len(self.skipped)} allowed skip(s))")


def pytest_configure(config: pytest.Config) -> None:
    strict = os.environ.get("CI", "").lower() == "true"
    config.pluginmanager.register(SkipGate(strict=strict), "collector-skip-gate")


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float,
                     what: str) -> None:
    """Poll `predicate` (plain or async) every 20 ms; fail the test if it is not true
    within `timeout` s. The one polling helper of the async tests."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
