"""Shared fixtures: settings on a tmp_path data dir, in-process apps, real server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from collector.config import Settings, load_settings
from collector.server.app import create_app
from tests.support.api import RECORDER, Recorder
from tests.support.ci import SkipGate
from tests.support.postgres import Cluster, cluster_or_skip
from tests.support.server import (
    ClientFactory,
    ServerProcess,
    SettingsFactory,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data dir for this test only."""
    return tmp_path / "data"


# -- the two backends -----------------------------------------------------------------------
# A test module (or class, or test) marked `both_backends` runs twice: on the embedded
# SQLite mode, and on a real PostgreSQL (the queue and the statistics in one database,
# as `[postgres] dsn` sets them). A test of that module that only means something in the
# SQLite mode (a queue file, a damaged stats.db) is marked `sqlite_only`.


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """The session's own cluster from Debian's packages (skipped when they are missing)."""
    yield from cluster_or_skip()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" (the default) or "postgres", for a test marked both_backends."""
    return str(getattr(request, "param", "sqlite"))


class BackendDatabases:
    """The PostgreSQL mode's databases of one test: one per data dir, as a data dir is
    one deployment on SQLite (a test that compares two servers gets two databases)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._by_dir: dict[Path, str] = {}

    def dsn_of(self, data_dir: Path) -> str:
        key = data_dir.resolve()
        if key not in self._by_dir:
            self._by_dir[key] = self.cluster.create_database()
        return self.cluster.dsn(self._by_dir[key])

    def drop_all(self) -> None:
        for name in self._by_dir.values():
            self.cluster.drop_database(name)


@pytest.fixture
def backend_databases(request: pytest.FixtureRequest,
                      backend: str) -> Iterator[BackendDatabases | None]:
    """In the PostgreSQL mode, the test's databases (one per data dir); else None."""
    if backend != "postgres":
        yield None
        return
    databases = BackendDatabases(request.getfixturevalue("postgres_cluster"))
    yield databases
    databases.drop_all()


@pytest.fixture
def backend_dsn(backend_databases: BackendDatabases | None, data_dir: Path) -> str | None:
    """The DSN of the test's data dir's database in the PostgreSQL mode, else None."""
    return None if backend_databases is None else backend_databases.dsn_of(data_dir)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if ("backend" in metafunc.fixturenames
            and definition.get_closest_marker("both_backends") is not None
            and definition.get_closest_marker("sqlite_only") is None):
        metafunc.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def make_settings(data_dir: Path, backend_databases: BackendDatabases | None
                  ) -> SettingsFactory:
    """Settings on this test's data dir; keyword arguments are "section__key" overrides.
    In the PostgreSQL mode (a test marked both_backends), the data dir's own database."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "server.data_dir": data_dir,
            "worker.handlers": ("noop",),
        }
        for name, value in overrides.items():
            section, _, key = name.partition("__")
            values[f"{section}.{key}"] = value
        if backend_databases is not None and "postgres.dsn" not in values:
            values["postgres.dsn"] = backend_databases.dsn_of(Path(values["server.data_dir"]))
            values.setdefault("postgres.node", "test-node")
        return load_settings(environ={}, overrides=values)

    return factory


@pytest.fixture
def make_client(make_settings: SettingsFactory, aiohttp_client: Any) -> ClientFactory:
    """Start the real application (real SQLite in tmp_path) behind a test client.

    make_settings comes first: its PostgreSQL databases (both_backends) are then torn
    down after aiohttp_client has stopped the apps, not dropped under running ones."""

    async def factory(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(settings or make_settings(**overrides))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return factory


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


def pytest_configure(config: pytest.Config) -> None:
    strict = os.environ.get("CI", "").lower() == "true"
    config.pluginmanager.register(SkipGate(strict=strict), "collector-skip-gate")


_NO_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.fixture(scope="module")
def as_a_user() -> tuple[str, ...]:
    """The command prefix that makes permission bits apply to a command run as root
    (setpriv drops the capabilities that override them); () when not root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: root would "
                    "ignore the permission bits under test")
    probe = Path(tempfile.mkdtemp(prefix="collector-probe-"))
    probe.chmod(0o555)
    try:
        result = subprocess.run(
            [*_NO_OVERRIDE, sys.executable, "-c",
             f"import os; print(os.access({str(probe)!r}, os.W_OK))"],
            capture_output=True, text=True, timeout=30, check=False)
    finally:
        probe.rmdir()
    if result.stdout.strip() != "False":
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here (setpriv: "
                    f"{(result.stderr or result.stdout).strip()[:200]}): root would ignore "
                    "the permission bits under test")
    return _NO_OVERRIDE


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """The jobs seen by `tests.support.api` handlers in this test (gate opened at the end)."""
    RECORDER.reset()
    yield RECORDER
    RECORDER.gate.set()
    RECORDER.reset()
