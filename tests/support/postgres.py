"""A private PostgreSQL cluster for the tests, from Debian's packages.

The cluster itself (`start_cluster`, `Cluster`, `missing_reason`) lives in
scripts/pgcluster.py, which the bench's `postgres` figure uses too: `initdb` and `pg_ctl`
from `/usr/lib/postgresql/<version>/bin`, in a folder of its own, on a free port of
127.0.0.1, with `fsync = on` and `synchronous_commit = on`, as the `postgres` user when
the tests run as root; Debian's own cluster on 5432 is never used. This module adds
what only the tests need.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from scripts.pgcluster import (
    PG_ROOT,
    SUPERUSER,
    Cluster,
    find_bindir,
    missing_reason,
    start_cluster,
)

if TYPE_CHECKING:
    from collector.postgres import Pool

__all__ = ["PG_ROOT", "SUPERUSER", "Cluster", "PoolFactory", "find_bindir", "missing_reason",
           "start_cluster"]

#: make_pool(max_size=N): a pool on the test's database, schema migrated (one node's).
PoolFactory = Callable[..., Awaitable["Pool"]]
