"""Handlers for scripts/bench.py, loaded by the daemon as `scripts.bench_handlers:gate`
(with the repository root on PYTHONPATH).

`gate` holds every job until the file named by the environment variable
`BENCH_GATE_FILE` exists, then acknowledges it and does nothing else. bench.py uses it
to build a backlog with the real daemon (the worker cannot make progress while the file
is missing) and to release it again (create the file; delete it to close the gate).
While it holds a job, the job counts as in flight; a SIGTERM cancels the wait and the
job stays pending on disk, at the head of the line.

Give the daemon a `worker.handler_timeout` longer than the gate stays closed
(bench.py sets `COLLECTOR_WORKER_HANDLER_TIMEOUT`), or the held job is retried and in
the end dead-lettered.
"""

from __future__ import annotations

import asyncio
import os

from collector import Job

GATE_ENV = "BENCH_GATE_FILE"
POLL_S = 0.02


async def gate(job: Job) -> None:
    """Wait until the gate file exists; then the job is done."""
    path = os.environ.get(GATE_ENV)
    if not path:
        raise RuntimeError(f"scripts.bench_handlers:gate needs ${GATE_ENV} (a file path)")
    # Polling a file on purpose: bench.py opens the gate from another process. A stat
    # every 20 ms does not block the loop in any way that matters here.
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(POLL_S)
