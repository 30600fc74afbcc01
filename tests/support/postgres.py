"""A private PostgreSQL cluster for the tests, from Debian's packages.

The cluster itself (`start_cluster`, `Cluster`, `missing_reason`) lives in
scripts/pgcluster.py, which the bench's `postgres` figure uses too: `initdb` and `pg_ctl`
from `/usr/lib/postgresql/<version>/bin`, in a folder of its own, on a free port of
127.0.0.1, with `fsync = on` and `synchronous_commit = on`, as the `postgres` user when
the tests run as root; Debian's own cluster on 5432 is never used. This module adds
what only the tests need: a restart of the server, and real `collector serve` nodes on
one database with a client that keeps what each `202` acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from scripts.pgcluster import (
    PG_ROOT,
    SUPERUSER,
    Cluster,
    find_bindir,
    missing_reason,
    start_cluster,
)
from tests.support.recorder import Record, read_records
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from collector.postgres import Pool

__all__ = [
    "PG_ROOT",
    "SUPERUSER",
    "Cluster",
    "PoolFactory",
    "Poster",
    "applied",
    "check_in_order_at_least_once",
    "check_once_in_order",
    "cluster_or_skip",
    "find_bindir",
    "missing_reason",
    "node",
    "queue_json",
    "restart_server",
    "running",
    "start_cluster",
]

#: make_pool(max_size=N): a pool on the test's database, schema migrated (one node's).
PoolFactory = Callable[..., Awaitable["Pool"]]


def cluster_or_skip() -> Iterator[Cluster]:
    """A private cluster for a fixture (stopped and removed after it); the test is
    skipped when Debian's PostgreSQL packages are missing (which fails a CI run)."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = start_cluster()
    yield cluster
    cluster.stop()


def restart_server(cluster: Cluster, mode: str = "immediate") -> None:
    """`pg_ctl restart -m MODE`: the server stopped (immediate: every session cut, as in
    a crash) and started again at once, on the same port and folder."""
    subprocess.run(
        [*cluster.prefix, str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir),
         "-m", mode, "-o", cluster.options, "-l", str(cluster.base / "server.log"),
         "-w", "-t", "60", "restart"],
        capture_output=True, text=True, timeout=90, check=True,
    )


# -- real nodes ------------------------------------------------------------------------------


def node(tmp_path: Path, dsn: str, name: str, record: Path,
         args: list[str] | None = None) -> ServerProcess:
    """A `collector serve` on `dsn` named `name`, with the recorder handler (one fsynced
    line per applied job in `record`) unless `args` names others."""
    folder = tmp_path / name
    folder.mkdir()
    return ServerProcess(folder / "data",
                         args=args or ["--handler", "tests.support.recorder:record"],
                         env={"COLLECTOR_POSTGRES_DSN": dsn, "COLLECTOR_POSTGRES_NODE": name,
                              "RECORDER_FILE": str(record)})


@contextlib.contextmanager
def running(nodes: list[ServerProcess]) -> Iterator[None]:
    """The nodes started (ready), SIGKILLed at the end."""
    try:
        for one in nodes:
            one.start()
        yield
    finally:
        for one in nodes:
            one.kill()


async def queue_json(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    """GET /v1/queue of `server` (200 expected)."""
    async with session.get(f"{server.url}/v1/queue") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


class Poster:
    """Posts two-event arrays with unique ids; keeps what each 202 acknowledged."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.ids = itertools.count()
        self.acked: dict[int, str] = {}  # seq -> event id
        self.statuses: list[int] = []
        self.retry_after_missing = 0
        self.unanswered = 0  # connection failures and client timeouts (a hang)

    async def post(self, server: ServerProcess, *, key: str | None = None
                   ) -> dict[str, Any] | None:
        """One request; its answer's body (None when the connection failed)."""
        n = next(self.ids)
        ids = [f"e{n}a", f"e{n}b"]
        headers = {} if key is None else {"Idempotency-Key": key}
        try:
            async with self.session.post(f"{server.url}/v1/events", headers=headers,
                                         json=[{"id": i} for i in ids]) as resp:
                self.statuses.append(resp.status)
                body: dict[str, Any] = await resp.json()
                if resp.status == 503 and "Retry-After" not in resp.headers:
                    self.retry_after_missing += 1
        except (TimeoutError, aiohttp.ClientConnectionError):
            self.unanswered += 1  # a node killed or stopping, or a hang: nothing acknowledged
            return None
        if resp.status == 202 and "Idempotent-Replayed" not in resp.headers:
            for seq, event_id in zip(range(body["first_seq"], body["last_seq"] + 1), ids,
                                     strict=True):
                self.acked.setdefault(seq, event_id)
        return body

    async def load(self, nodes: list[ServerProcess], stop: asyncio.Event) -> None:
        """Post to the nodes in turn until `stop` is set."""
        for turn in itertools.count():
            if stop.is_set():
                return
            await self.post(nodes[turn % len(nodes)])
            await asyncio.sleep(0.002)


def applied(record: Path) -> list[Record]:
    """The jobs the recorder handler applied, in the order it applied them."""
    return [r for r in read_records(record) if r.kind == "done"]


def check_once_in_order(records: list[Record], acked: dict[int, str]) -> None:
    """Every acknowledged event applied, in seq order, with its own payload."""
    seqs = [r.seq for r in records]
    assert seqs == sorted(set(seqs)), "applied twice or out of seq order"
    assert set(acked) <= set(seqs), f"acknowledged, never applied: {sorted(set(acked) - set(seqs))}"
    by_seq = {r.seq: r.event_id for r in records}
    assert all(by_seq[s] == e for s, e in acked.items()), "a seq holds another event"


def check_in_order_at_least_once(records: list[Record], acked: dict[int, str]) -> None:
    """Every acknowledged event applied with its own payload, each event stored under
    one seq, the events first applied in seq order; a seq applied again only where a
    new term resumed from the committed mark: what it applies again is the end of what
    was applied before it (a suffix in applied order), never an earlier part."""
    seqs = [r.seq for r in records]
    assert set(acked) <= set(seqs), f"acknowledged, never applied: {sorted(set(acked) - set(seqs))}"
    by_seq: dict[int, str] = {}
    for r in records:
        assert by_seq.setdefault(r.seq, r.event_id) == r.event_id, f"seq {r.seq}: two events"
    assert all(by_seq[s] == e for s, e in acked.items()), "a seq holds another event"
    by_event = {e: s for s, e in by_seq.items()}
    assert len(by_event) == len(by_seq), "an event stored under two seqs"
    first: list[int] = []  # distinct seqs in the order of their first application
    run: list[int] = []  # the current run of applications (seqs increasing)
    for seq in [*seqs, None]:
        if seq is not None and (not run or seq > run[-1]):
            run.append(seq)
            continue
        top = first[-1] if first else 0
        again = [s for s in run if s <= top]
        assert again == first[len(first) - len(again):], \
            f"applied again from seq {again[0]}: not the end of what was applied before"
        first.extend(s for s in run if s > top)
        run = [] if seq is None else [seq]
