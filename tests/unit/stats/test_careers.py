"""A player's career statistics are kept between reads (the players list and a
player's page sum every line they ever played), and forgotten when the store commits
new statistics for one of their lines: what the daemon answers is always what a fresh
read of the file gives, during a match and after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector.jobs import Job
from collector.stats.store import StatsStore
from scripts.simulate_match import simulate

pytestmark = pytest.mark.both_backends

T0 = 1_790_000_000.0
NAMES = ["Ann", "Bob"]


def _jobs(seed: int, first_seq: int) -> list[Job]:
    lines = simulate(seed=seed, size=1, minutes=0.5, rate=10, names=NAMES)
    return [Job(seq=first_seq + i, payload=json.loads(line), received_at=T0 + seed * 1000 + i)
            for i, line in enumerate(lines)]


async def _fresh(data: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The players page and Ann's page as a new reader of the file sees them."""
    reader = StatsStore(data, readonly=True)
    await reader.open()
    try:
        return await reader.players_page(limit=10), await _ann(reader)
    finally:
        await reader.close()


async def _ann(store: StatsStore) -> dict[str, Any]:
    page = await store.players_page(limit=10)
    (ann,) = [p for p in page["players"] if p["name"] == "Ann"]
    player = await store.player(ann["id"])
    assert player is not None
    return player


async def test_kept_careers_follow_every_commit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = StatsStore(data)
    await store.open()
    try:
        first = _jobs(1, 1)
        second = _jobs(2, len(first) + 1)
        half = len(second) // 2
        seen = []
        for run in (first, second[:half], second[half:]):
            for start in range(0, len(run), 200):
                await store.apply_run(run[start:start + 200])
            # Read twice through the daemon's store (the second read is kept), then compare
            # with a reader that keeps nothing.
            await store.players_page(limit=10)
            page, ann = await store.players_page(limit=10), await _ann(store)
            assert (page, ann) == await _fresh(data)
            seen.append(ann["stats"]["tracked_s"])
        # Each run added play to Ann's career: the kept figure moved with it.
        assert seen[0] < seen[1] < seen[2]
        # What a caller does to an answer does not change what is kept.
        ann = await _ann(store)
        ann["stats"]["tracked_s"] = -1.0
        assert (await _ann(store))["stats"]["tracked_s"] == seen[2]
    finally:
        await store.close()
