"""Helpers for the bridge and replay tests: a recording handler and a fake game.

`record` is loaded by a real `collector serve` subprocess with
`--handler tests.support.bridge:record`; it appends one JSON line per job it handles
(seq, source, sequence, payload) to the file named by the environment variable
BRIDGE_RECORD, with one O_APPEND write, so a SIGKILL of the server cannot tear a line.
(Environment variables starting with COLLECTOR_ are settings, hence the name.)

`FakeGame` listens on loopback like Rocket League's Stats API and writes scripted bytes
to each connection in random chunk sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from collector.jobs import Job

RECORD_ENV = "BRIDGE_RECORD"


async def record(job: Job) -> None:
    """Append the job (seq, source, sequence, payload) to $BRIDGE_RECORD."""
    line = orjson.dumps({"seq": job.seq, "source": job.source, "sequence": job.sequence,
                         "attempt": job.attempt, "payload": job.payload}) + b"\n"
    fd = os.open(os.environ[RECORD_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line the recording handler wrote, in order (a server replay included).

    The server may be writing while a test polls: a last line without its newline is a
    write still in progress and is left for the next read (as in tests/support/recorder.py).
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is cut
    return [orjson.loads(line) for line in lines if line]


def unique_jobs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per queue seq, in seq order; a seq handled twice must look the same twice.

    The server may hand a job to its handler again only after its own crash (at least
    once), and then it is the same job: same seq, source, sequence and payload. Anything
    stored twice by the server has two seqs and is NOT folded here.
    """
    by_seq: dict[int, dict[str, Any]] = {}
    for rec in records:
        seen = by_seq.get(rec["seq"])
        if seen is None:
            by_seq[rec["seq"]] = rec
        else:
            assert {k: v for k, v in seen.items() if k != "attempt"} == {
                k: v for k, v in rec.items() if k != "attempt"}, (seen, rec)
    return [by_seq[seq] for seq in sorted(by_seq)]


@dataclass
class Gate:
    """A point in a session's bytes where the fake game stops until `resume` is set."""

    offset: int
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Session:
    """What the fake game writes to one connection.

    It writes `data` in random chunks, stopping at each gate until it is resumed. Then it
    closes the connection, unless `hold` is given: then the connection stays open (a game
    sitting in its menus) until `hold` is set or the game stops.
    """

    data: bytes
    gates: list[Gate] = field(default_factory=list)
    hold: asyncio.Event | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FakeGame:
    """A loopback TCP server that replays scripted sessions, one per connection."""

    def __init__(self, sessions: list[Session], *, port: int = 0, seed: int | None = None,
                 max_chunk: int = 4096, chunk_pause: float = 0.0) -> None:
        self.sessions = list(sessions)
        self.port = port
        self.seed = random.randrange(2**32) if seed is None else seed
        self._rng = random.Random(self.seed)
        self._max_chunk = max_chunk
        self._chunk_pause = chunk_pause
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> FakeGame:
        """Listen (on `port`, or a free one the first time)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        # Shown with a failing test's output: FakeGame(..., seed=N) replays the chunking.
        structlog.get_logger("tests.fakegame").info("fake_game_listening", port=self.port,
                                                    seed=self.seed)
        return self

    async def __aenter__(self) -> FakeGame:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and drop every connection (again: nothing happens)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if not self.sessions:
                await reader.read()  # no script left: an idle game, until the client leaves
                return
            session = self.sessions.pop(0)
            await self._write(writer, session)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, session: Session) -> None:
        data = session.data
        gates = sorted(session.gates, key=lambda gate: gate.offset)
        pos = 0
        while pos < len(data):
            end = min(len(data), pos + self._rng.randint(1, self._max_chunk))
            gate = next((g for g in gates if pos < g.offset <= end), None)
            if gate is not None:
                end = gate.offset
            writer.write(data[pos:end])
            await writer.drain()
            pos = end
            if gate is not None:
                gate.reached.set()
                await gate.resume.wait()
            await asyncio.sleep(self._chunk_pause)
        if session.hold is not None:
            await session.hold.wait()
        session.done.set()
