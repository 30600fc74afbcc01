"""Handlers that tests load by spec (`--handler tests.support.handlers:NAME`) in a real
server or an in-process app: slow, stubborn, picky and failing ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from collector import Job, PermanentError


async def stubborn(job: Job) -> None:
    """A handler that never returns: it swallows the worker's timeout cancellation.

    Any other cancellation (shutdown) goes through, so the test can still stop it.
    """
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as exc:
            if exc.args != ("handler_timeout",):
                raise


async def bury(job: Job) -> None:
    """Dead-letters every job (an error-level log line)."""
    raise PermanentError("no thanks")


async def slow(job: Job) -> None:
    """One second per job (long enough to stop the daemon amid one); dead-letters "fail"."""
    if job.payload.get("fail"):
        raise PermanentError("asked to fail")
    await asyncio.sleep(1.0)


async def picky(job: Job) -> None:
    """Dead-letters events marked "bad" while PICKY.refuse holds; records the rest."""
    if PICKY.refuse and job.payload.get("bad"):
        raise PermanentError(f"refused {job.payload.get('n')}")
    PICKY.seen.append((job.seq, job.payload.get("n")))


async def refuse_bad(job: Job) -> None:
    """Dead-letters events marked "bad", in any process (no shared state)."""
    if job.payload.get("bad"):
        raise PermanentError(f"refused {job.payload.get('n')}")


async def always_fails(job: Job) -> None:
    """A handler that fails every time (retried, then dead-lettered)."""
    raise RuntimeError("nope")


async def fail_first_attempt(job: Job) -> None:
    """A user handler (module:callable) that fails each job's first attempt."""
    if job.attempt == 1:
        raise RuntimeError("not yet")


@dataclass(slots=True)
class Picky:
    """What `picky` saw, and whether it still refuses events marked "bad"."""

    refuse: bool = True
    seen: list[tuple[int, Any]] = field(default_factory=list)


PICKY = Picky()
