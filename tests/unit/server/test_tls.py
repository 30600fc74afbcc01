"""The daemon over HTTPS (issue 19, "TLS on the LAN").

A real `collector serve` with server.tls_cert_file and tls_key_file serves HTTPS, on
its own port and on a socket systemd hands it, says so in daemon.json and its
"listening" line, gives a plain HTTP request no answer, and refuses to start in one line
(exit 1) when the certificate or the key cannot be used.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from collector.server.run import server_tls_context
from tests.support.model import cli_env, one_line, run_cli
from tests.support.server import free_port
from tests.support.tls import Certificates, TlsServerProcess, make_certificates, tls_server


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def server(data_dir: Path, certificates: Certificates) -> Iterator[TlsServerProcess]:
    with tls_server(data_dir, certificates) as proc:
        yield proc


def log_events(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_daemon_serves_https_and_says_so(server: TlsServerProcess,
                                                   certificates: Certificates,
                                                   data_dir: Path) -> None:
    connector = aiohttp.TCPConnector(ssl=certificates.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"{server.url}/v1/events", json={"Event": "ping"}) as resp:
            assert resp.status == 202, await resp.text()
        async with session.get(f"{server.url}/v1/queue") as resp:
            assert (await resp.json())["last_seq"] == 1
    record = json.loads((data_dir / "daemon.json").read_text())
    assert record["urls"] == [server.url]
    assert record["tls_cert_file"] == str(certificates.cert)
    listening = [e for e in log_events(server.output()) if e["event"] == "listening"]
    assert listening, server.output()
    assert listening[0]["scheme"] == "https"


def test_plain_http_to_the_https_port_gets_no_answer(server: TlsServerProcess,
                                                     certificates: Certificates) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer
    # The daemon carries on, and says nothing alarming about it.
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10,
                                context=certificates.client_context()) as resp:
        assert resp.status == 200
    assert "Traceback" not in server.output()


def test_tls_1_2_at_least(server: TlsServerProcess, certificates: Certificates) -> None:
    context = server_tls_context(certificates.cert, certificates.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    client = certificates.client_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    old = certificates.client_context()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # a client that would speak TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "TLS 1.1 is deprecated": yes
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_socket_activation_serves_https_too(tmp_path: Path,
                                            certificates: Certificates) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    log = tmp_path / "serve.log"
    # The socket becomes fd 3 of a process whose pid is LISTEN_PID, as systemd does it.
    script = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
              "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
              "os.execv(sys.executable, [sys.executable, '-m', 'collector', 'serve', "
              "*sys.argv[2:]])")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(listener.fileno()), "--port",
             str(free_port()), "--data-dir", str(tmp_path / "data"), "--handler", "noop"],
            pass_fds=(listener.fileno(),), stdout=out, stderr=subprocess.STDOUT,
            env=cli_env(**certificates.settings_env()))
    listener.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2,
                                            context=certificates.client_context()) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        listening = [e for e in log_events(log.read_text()) if e["event"] == "listening"]
        assert listening[0]["inherited"] is True, listening
        assert listening[0]["scheme"] == "https"
        assert listening[0]["sockets"] == [f"https://127.0.0.1:{port}"]
    finally:
        proc.terminate()
        proc.wait(30)


def _encrypted_key(path: Path) -> Path:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    out = path.with_name("encrypted.key")
    out.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
    return out


def _cases(c: Certificates, tmp: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (cert, key, the line after `collector: error: `)."""
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other_key = tmp / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    missing = tmp / "missing.pem"
    encrypted = _encrypted_key(c.key)
    return {
        "no cert": (missing, c.key, f"server.tls_cert_file: no such file {missing} "
                                    "(the certificate, PEM)"),
        "no key": (c.cert, missing, f"server.tls_key_file: no such file {missing} "
                                    "(the private key, PEM)"),
        "cert is a folder": (tmp, c.key, f"server.tls_cert_file: {tmp} is a folder, not a "
                                         "certificate file"),
        "cert not PEM": (garbage, c.key, f"server.tls_cert_file: {garbage} holds no PEM "
                                         "certificate"),
        "key not PEM": (c.cert, c.cert, f"server.tls_key_file: {c.cert} holds no PEM "
                                        "private key"),
        "key of another cert": (c.cert, other_key, f"server.tls_key_file: {other_key} is not "
                                f"the key of the certificate in {c.cert} "
                                "(server.tls_cert_file)"),
        "key with a passphrase": (c.cert, encrypted, f"server.tls_key_file: {encrypted} is "
                                  "encrypted with a passphrase, which the daemon cannot ask "
                                  "for (write it without one: openssl pkey -in KEY -out "
                                  "NEW_KEY)"),
    }


CASES = ["no cert", "no key", "cert is a folder", "cert not PEM", "key not PEM",
         "key of another cert", "key with a passphrase"]


@pytest.mark.parametrize("case", CASES)
def test_a_certificate_or_key_that_cannot_be_used_stops_the_daemon_in_one_line(
        tmp_path: Path, certificates: Certificates, case: str) -> None:
    cert, key, said = _cases(certificates, tmp_path)[case]
    data = tmp_path / "data"
    result = run_cli("serve", "--port", str(free_port()), "--data-dir", str(data),
                     "--handler", "noop", cwd=tmp_path,
                     env=cli_env(COLLECTOR_SERVER_TLS_CERT_FILE=str(cert),
                                 COLLECTOR_SERVER_TLS_KEY_FILE=str(key)))
    assert result.returncode == 1, (result.stdout, result.stderr)  # docs/cli.md: cannot start
    assert one_line(result.stderr) == f"collector: error: {said}"
    assert not data.exists()  # refused before the data dir was touched


def test_a_key_the_daemon_may_not_read(tmp_path: Path, certificates: Certificates,
                                       as_a_user: tuple[str, ...]) -> None:
    os.chmod(certificates.key, 0)
    result = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
                     cwd=tmp_path, prefix=as_a_user, env=cli_env(**certificates.settings_env()))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert one_line(result.stderr) == (f"collector: error: server.tls_key_file: cannot read "
                                       f"{certificates.key} (permission denied)")
