"""Shared fixtures: settings on a tmp_path data dir, in-process apps, real server processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from collector.config import Settings, load_settings
from collector.server.app import create_app
from tests.support.ci import SkipGate
from tests.support.server import (
    ClientFactory,
    ServerProcess,
    SettingsFactory,
)


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


