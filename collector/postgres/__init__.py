"""PostgreSQL mode: several nodes on one database, one total order, one elected worker.

The only package that touches PostgreSQL (and the only one that imports asyncpg, in
`db`). `schema` creates and migrates the tables; `log` is the shared ordered log (the
serialised append, the leader's reader, fenced settling, dead letters, numbers);
`leader` elects the one node that applies the log. See docs/scale-out.md.
"""

from __future__ import annotations

from collector.postgres.db import Connection, Pool, connect, create_pool
from collector.postgres.leader import Candidate, Term
from collector.postgres.log import (
    FencedError,
    KeyConflictError,
    LogReader,
    LogState,
    Request,
    SharedLog,
)
from collector.postgres.queue import PostgresQueue
from collector.postgres.schema import migrate

__all__ = [
    "Candidate", "Connection", "FencedError", "KeyConflictError",
    "LogReader", "LogState", "Pool", "PostgresQueue", "Request", "SharedLog", "Term", "connect",
    "create_pool", "migrate",
]
