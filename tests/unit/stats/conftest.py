"""The statistics tests run on both backends where marked (tests/conftest.py): in the
PostgreSQL mode, every StatsStore a test opens keeps its statistics in PostgreSQL, one
database per data dir (a test that compares two stores gets two databases, as it gets
two stats.db files on SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from collector.postgres.stats import PostgresStats
from collector.stats.backend import SharedBackend
from collector.stats.store import StatsStore
from tests.conftest import BackendDatabases


class _OnlyWriter(PostgresStats):
    """A store alone on its database, as if it led for ever: no log, so no fence (the
    fence is tested with real nodes in tests/unit/postgres/test_stats.py)."""

    def before_commit(self, conn: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _stats_on_backend(backend_databases: BackendDatabases | None,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    databases = backend_databases
    if databases is None:
        return
    original = StatsStore.__init__

    def init(self: StatsStore, data_dir: Path, *, durability: Literal["full", "normal"] = "full",
             readonly: bool = False, shared: SharedBackend | None = None) -> None:
        if shared is None:
            shared = _OnlyWriter(databases.dsn_of(data_dir), f"the database of {data_dir.name}")
        original(self, data_dir, durability=durability, readonly=readonly, shared=shared)

    monkeypatch.setattr(StatsStore, "__init__", init)
