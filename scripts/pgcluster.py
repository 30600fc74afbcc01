"""A private PostgreSQL cluster from Debian's packages, for the tests and the bench.

`start_cluster` runs `initdb` and `pg_ctl start` from `/usr/lib/postgresql/<version>/bin`
(the newest version installed) in a folder of its own, on a free port of 127.0.0.1, with
`fsync = on` and `synchronous_commit = on`: the tests check durability, and the bench
measures what a real deployment commits, so the usual test shortcut of a cluster without
fsync would make both meaningless. As root, the cluster runs as the `postgres` user
(`initdb` refuses root) and its folder belongs to that user (pytest's temporary folders
are 0700 root). Debian's own cluster on 5432, when there is one, is never used.
`Cluster.stop` stops the server and removes the folder.

Used by tests/support/postgres.py (the test suite's fixtures) and scripts/bench.py (the
`postgres` figure); it imports nothing of collector.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

PG_ROOT: Final = Path("/usr/lib/postgresql")
SUPERUSER: Final = "postgres"
_START_TIMEOUT_S: Final = 60


def find_bindir() -> Path | None:
    """The bin folder of the newest PostgreSQL installed from Debian's packages, or None."""
    found = []
    for initdb in PG_ROOT.glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if version.isdigit() and (initdb.parent / "pg_ctl").exists():
            found.append((int(version), initdb.parent))
    return max(found)[1] if found else None


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    if find_bindir() is None:
        return (f"PostgreSQL server binaries not found in {PG_ROOT}/<version>/bin "
                "(apt-get install postgresql; .ci/run installs it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Cluster:
    """A running private cluster: its folder, port and the command prefix to run as its owner."""

    bindir: Path
    base: Path
    port: int
    prefix: tuple[str, ...]
    host: str = "127.0.0.1"
    options: str = ""  # the server's options (pg_ctl -o), for start_server
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        """A DSN for `dbname` over TCP (so that TCP keepalive settings apply)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run `sql` with psql as the superuser; returns its unaligned output."""
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, prefix: str = "test") -> str:
        """A fresh, empty database (CREATE DATABASE from template0); returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any session still on it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: fast or immediate), keeping its folder: the
        database is unreachable until start_server."""
        subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
             "-m", mode, "-w", "stop"],
            capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=True,
        )

    def start_server(self) -> None:
        """Start the stopped server again, on the same port and folder."""
        subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o",
             self.options, "-l", str(self.base / "server.log"), "-w", "-t",
             str(_START_TIMEOUT_S), "start"],
            capture_output=True, text=True, timeout=_START_TIMEOUT_S + 10, check=True,
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the cluster's folder."""
        try:
            subprocess.run(
                [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                 "-m", "fast", "-w", "stop"],
                capture_output=True, timeout=_START_TIMEOUT_S, check=False,
            )
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (for a failure message)."""
        path = self.base / "server.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_cluster() -> Cluster:
    """initdb and start a private cluster on a free port; the caller must `stop()` it."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(missing_reason() or "no PostgreSQL")
    base = Path(tempfile.mkdtemp(prefix="collector-pg-"))
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ("runuser", "-u", SUPERUSER, "--")
    cluster = Cluster(bindir=bindir, base=base, port=_free_port(), prefix=prefix)
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=True,
        )
        cluster.options = " ".join([
            f"-p {cluster.port}", f"-k {base}", "-c listen_addresses=127.0.0.1",
            "-c fsync=on", "-c synchronous_commit=on", "-c full_page_writes=on",
            "-c max_connections=200", "-c shared_buffers=64MB",
        ])
        cluster.start_server()
    except subprocess.CalledProcessError as exc:
        log = cluster.log_tail()
        cluster.stop()
        raise RuntimeError(f"cannot start PostgreSQL: {exc.stderr.strip()}\n{log}") from None
    return cluster
