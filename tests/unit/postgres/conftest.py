"""A private PostgreSQL cluster for the session (fsync on), a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from collector.postgres import Pool, create_pool, migrate
from tests.support.postgres import Cluster, PoolFactory, cluster_or_skip


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own, which it may stop, restart or start again."""
    yield from cluster_or_skip()


@pytest.fixture
def pg_dsn(postgres_cluster: Cluster) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test only."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.dsn(name)
    postgres_cluster.drop_database(name)


@pytest.fixture
async def make_pool(pg_dsn: str) -> AsyncIterator[PoolFactory]:
    """Pools on this test's database, the log schema migrated; each is what one node
    would hold. All are closed at the end."""
    pools: list[Pool] = []

    async def factory(*, max_size: int = 2) -> Pool:
        pool = await create_pool(pg_dsn, min_size=1, max_size=max_size)
        pools.append(pool)
        async with pool.acquire() as conn:
            await migrate(conn)
        return pool

    yield factory
    for pool in pools:
        await pool.close()
