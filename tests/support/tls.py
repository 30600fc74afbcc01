"""Certificates for the TLS tests, and a real `collector serve` over HTTPS.

`make_certificates` makes a private CA with trustme and a server certificate it signed
for localhost and 127.0.0.1; `self_signed` makes a self-signed one with openssl, the way
scripts/install.sh --self-signed does. `TlsServerProcess` is `ServerProcess` with both
TLS settings in its environment and an https:// URL.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.server import ServerProcess

#: The line every client prints or logs for a certificate it does not trust.
UNTRUSTED = "certificate not trusted (self-signed? pass --ca-file FILE)"


@dataclass(frozen=True, slots=True)
class Certificates:
    """PEM files: what a client trusts (`ca`), what the daemon serves (`cert`, `key`)."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client's context that trusts `ca` (host name checked)."""
        return ssl.create_default_context(cafile=self.ca)

    def settings_env(self) -> dict[str, str]:
        """The two settings as environment variables of `collector serve`."""
        return {"COLLECTOR_SERVER_TLS_CERT_FILE": str(self.cert),
                "COLLECTOR_SERVER_TLS_KEY_FILE": str(self.key)}


def make_certificates(folder: Path) -> Certificates:
    """A private CA, and a certificate for localhost and 127.0.0.1 that it signed."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = Certificates(ca=folder / "ca.pem", cert=folder / "cert.pem", key=folder / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def self_signed(folder: Path) -> Certificates:
    """A self-signed certificate as scripts/install.sh --self-signed makes one (EC P-256,
    not a CA, 825 days); clients trust the certificate itself."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "self-signed.pem", folder / "self-signed.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "825", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "keyUsage=critical,digitalSignature",
         "-addext", "extendedKeyUsage=serverAuth",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return Certificates(ca=cert, cert=cert, key=key)


@contextlib.contextmanager
def trusting(ca: Path) -> Iterator[None]:
    """urllib's default context trusts `ca` meanwhile (SSL_CERT_FILE, which OpenSSL reads
    each time a default context is made): for ServerProcess.start's /readyz probe."""
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca)
    try:
        yield
    finally:
        if before is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = before


class TlsServerProcess(ServerProcess):
    """A real `collector serve` with server.tls_cert_file and tls_key_file set."""

    def __init__(self, data_dir: Path, certificates: Certificates, *,
                 args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, args=args, env={**certificates.settings_env(), **(env or {})})
        self.certificates = certificates

    @property
    def url(self) -> str:
        """Base URL of the server: https."""
        return f"https://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 20.0) -> None:
        """Start the process and wait until /readyz answers 200 over HTTPS."""
        with trusting(self.certificates.ca):
            super().start(timeout=timeout)


@contextlib.contextmanager
def tls_server(data_dir: Path, certificates: Certificates, *,
               env: dict[str, str] | None = None) -> Iterator[TlsServerProcess]:
    """A started TlsServerProcess on `data_dir`, killed on exit."""
    proc = TlsServerProcess(data_dir, certificates, env=env)
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()
