"""Handlers importable by spec (`tests.support.api:record`) that let tests see the jobs.

`create_app` resolves handlers from `package.module:callable` specs, so what they record
has to live at module level; the `recorder` fixture of the tests resets it per test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from collector import Job


@dataclass(slots=True)
class Recorder:
    """The jobs the handlers below saw, and the gate that `block` waits on."""

    jobs: list[Job] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Forget every job and close the gate (a fresh Event for the test's own loop)."""
        self.jobs = []
        self.gate = asyncio.Event()


RECORDER = Recorder()


async def record(job: Job) -> None:
    """Remember the job and acknowledge it."""
    RECORDER.jobs.append(job)


async def block(job: Job) -> None:
    """Remember the job, then hold it until the test opens the gate."""
    RECORDER.jobs.append(job)
    await RECORDER.gate.wait()
