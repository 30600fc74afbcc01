"""A real `collector serve` in a subprocess, a free port, and the async polling helper."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from collector.config import Settings
from tests.support.paths import REPO

SettingsFactory = Callable[..., Settings]


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


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
            [str(REPO), env.get("PYTHONPATH", "")]
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
