"""The clients of an HTTPS daemon (issue 19, "TLS on the LAN"): `replay`, `bridge` and the
admin commands trust a private certificate with --ca-file, and say in one line what to
do when they do not trust it, with nothing delivered.

Every command is the real `collector` in a subprocess; every daemon a real
`collector serve` with a certificate signed by a trustme CA (or self-signed by openssl,
as scripts/install.sh --self-signed makes it).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.bridge import FakeGame, Session
from tests.support.model import cli_env, one_line, run_cli
from tests.support.paths import CAPTURE_STREAM
from tests.support.server import ServerProcess, wait_until
from tests.support.tls import (
    UNTRUSTED,
    Certificates,
    TlsServerProcess,
    make_certificates,
    self_signed,
    tls_server,
)

#: Messages in CAPTURE_STREAM (tests/fixtures/rl-stats-api/README.md).
CAPTURE_MESSAGES = 438
MESSAGES = b'{"Event":"UpdateState","Data":{"n":1}}{"Event":"UpdateState","Data":{"n":2}}'


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def server(data_dir: Path, certificates: Certificates) -> Iterator[TlsServerProcess]:
    with tls_server(data_dir, certificates) as proc:
        yield proc


async def queue_of(server: TlsServerProcess) -> dict[str, Any]:
    """GET /v1/queue over HTTPS, trusting the test CA."""
    connector = aiohttp.TCPConnector(ssl=server.certificates.client_context())
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"{server.url}/v1/queue") as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


def failed(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one line of a command that ended with `code`, without its prefix."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    line = one_line(result.stderr)
    assert line.startswith("collector: error: "), line
    return line.removeprefix("collector: error: ")


# -- replay -----------------------------------------------------------------------------------


async def test_replay_with_ca_file_delivers_the_recording_over_https(
        server: TlsServerProcess, certificates: Certificates, tmp_path: Path) -> None:
    result = run_cli("replay", str(CAPTURE_STREAM), "--to", server.url, "--fast",
                     "--ca-file", str(certificates.ca), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)

    async def all_processed() -> bool:
        queue = await queue_of(server)
        return bool(queue["processed_total"] == CAPTURE_MESSAGES)

    await wait_until(all_processed, timeout=30, what="every message processed")
    assert (await queue_of(server))["last_seq"] == CAPTURE_MESSAGES


async def test_replay_without_ca_file_is_refused_at_once_and_delivers_nothing(
        server: TlsServerProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli("replay", str(CAPTURE_STREAM), "--to", server.url, "--fast",
                     "--give-up-after", "60", cwd=tmp_path)
    assert failed(result) == f"{server.url}: {UNTRUSTED}"
    assert time.monotonic() - started < 30  # a setting to fix, not a collector to wait for
    assert (await queue_of(server))["last_seq"] == 0


async def test_a_self_signed_certificate_is_its_own_ca_file(tmp_path: Path) -> None:
    own = self_signed(tmp_path / "tls")
    with tls_server(tmp_path / "data", own) as server:
        result = run_cli("replay", str(CAPTURE_STREAM), "--to", server.url, "--fast",
                         "--ca-file", str(own.cert), cwd=tmp_path)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert (await queue_of(server))["last_seq"] == CAPTURE_MESSAGES


# -- bridge -----------------------------------------------------------------------------------


class Bridge:
    """`collector bridge` in the background, its JSON log lines in a file."""

    def __init__(self, tmp_path: Path, game: FakeGame, to: str, *extra: str) -> None:
        self.out = tmp_path / "bridge.log"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "bridge", "--game",
                 f"127.0.0.1:{game.port}", "--to", to, "--spool-dir", str(tmp_path / "spool"),
                 "--max-backoff", "0.5", *extra],
                cwd=tmp_path, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.out.read_text(errors="replace").splitlines()
        return [e for e in (orjson.loads(line) for line in lines if line.startswith("{"))
                if e["event"] == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
async def game() -> Any:
    hold = asyncio.Event()
    async with FakeGame([Session(MESSAGES, hold=hold)]) as fake:
        yield fake
        hold.set()


async def test_the_bridge_with_ca_file_delivers_over_https(
        server: TlsServerProcess, certificates: Certificates, game: FakeGame,
        tmp_path: Path) -> None:
    bridge = Bridge(tmp_path, game, server.url, "--ca-file", str(certificates.ca))
    try:
        async def delivered() -> bool:
            assert bridge.proc.poll() is None, bridge.out.read_text()
            return bool((await queue_of(server))["processed_total"] == 2)

        await wait_until(delivered, timeout=30, what="both messages processed")
    finally:
        assert bridge.stop() == 0, bridge.out.read_text()
    assert not bridge.events("collector_certificate_rejected")


async def test_the_bridge_without_ca_file_says_why_each_time_and_keeps_everything(
        server: TlsServerProcess, game: FakeGame, tmp_path: Path) -> None:
    bridge = Bridge(tmp_path, game, server.url)
    try:
        await wait_until(lambda: len(bridge.events("collector_certificate_rejected")) >= 2,
                         timeout=30, what="two rejections logged")
        assert bridge.proc.poll() is None  # it keeps trying: the spool keeps everything
        first = bridge.events("collector_certificate_rejected")[0]
        assert first["error"] == f"{server.url}: {UNTRUSTED}"
        assert first["level"] == "error"
        assert (await queue_of(server))["last_seq"] == 0
    finally:
        assert bridge.stop() == 0, bridge.out.read_text()
    stopped = bridge.events("bridge_stopped")
    assert stopped, bridge.out.read_text()
    assert stopped[0]["spooled"] == 2  # still there for the next run


# -- the admin and statistics commands ----------------------------------------------------------


def test_status_over_https(server: TlsServerProcess, certificates: Certificates,
                           tmp_path: Path) -> None:
    trusted = run_cli("status", "--url", server.url, "--ca-file", str(certificates.ca),
                      cwd=tmp_path)
    assert trusted.returncode == 0, (trusted.stdout, trusted.stderr)
    assert f"from            {server.url}" in trusted.stdout
    assert "ready" in trusted.stdout

    untrusted = run_cli("status", "--url", server.url, cwd=tmp_path)
    assert failed(untrusted) == f"{server.url}: {UNTRUSTED}"

    plain = server.url.replace("https://", "http://")
    assert failed(run_cli("status", "--url", plain, cwd=tmp_path)) == (
        f"GET {plain}/v1/queue: {plain} closed the connection without answering "
        "(an HTTPS port? use https://)")

    matches = run_cli("matches", "--url", server.url, "--ca-file", str(certificates.ca),
                      "--json", cwd=tmp_path)
    assert matches.returncode == 0, (matches.stdout, matches.stderr)
    assert failed(run_cli("players", "--url", server.url, cwd=tmp_path)) == (
        f"{server.url}: {UNTRUSTED}")


def test_https_to_a_plain_http_daemon_says_so(server_process: Callable[..., ServerProcess],
                                              tmp_path: Path) -> None:
    plain = server_process()
    plain.start()
    url = plain.url.replace("http://", "https://")
    assert failed(run_cli("status", "--url", url, cwd=tmp_path)) == (
        f"GET {url}/v1/queue: cannot connect to {url} (TLS handshake failed: the server "
        "does not speak TLS; plain HTTP? use http://)")


def test_status_trusts_the_certificate_the_daemon_recorded_or_the_config_names(
        server: TlsServerProcess, certificates: Certificates, tmp_path: Path) -> None:
    by_data_dir = run_cli("status", "--data-dir", str(server.data_dir), cwd=tmp_path)
    assert by_data_dir.returncode == 0, (by_data_dir.stdout, by_data_dir.stderr)
    assert f"from            {server.url}" in by_data_dir.stdout  # daemon.json's https URL

    config = tmp_path / "collector.toml"
    config.write_text(f'[server]\nport = {server.port}\n'
                      f'tls_cert_file = "{certificates.cert}"\n'
                      f'tls_key_file = "{certificates.key}"\n')
    by_config = run_cli("status", "--config", str(config), cwd=tmp_path)
    assert by_config.returncode == 0, (by_config.stdout, by_config.stderr)
    assert f"from            {server.url}" in by_config.stdout


# -- --ca-file itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["status", "--url", "https://127.0.0.1:9"],
    ["import", "-", "--url", "https://127.0.0.1:9"],
    ["replay", str(CAPTURE_STREAM), "--to", "https://127.0.0.1:9"],
    ["bridge", "--to", "https://127.0.0.1:9"],
])
def test_a_ca_file_that_cannot_be_used_is_a_usage_error(tmp_path: Path,
                                                        command: list[str]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path, why in [(tmp_path / "missing.pem", f"no such file {tmp_path / 'missing.pem'}"),
                      (tmp_path, f"{tmp_path} is a folder, not a PEM certificate file"),
                      (garbage, f"{garbage} holds no PEM certificate")]:
        result = run_cli(*command, "--ca-file", str(path), cwd=tmp_path, timeout=30)
        assert result.returncode == 2, (result.stdout, result.stderr)
        line = one_line(result.stderr)
        assert f"error: argument --ca-file: {why}" in line, line
