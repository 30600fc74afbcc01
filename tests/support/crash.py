"""Waiting on a real server: poll until a condition holds, drain the queue and stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support.server import ServerProcess, wait_until


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """wait_until with this module's bound."""
    await wait_until(predicate, timeout=timeout, what=what)


async def drain_and_stop(server: ServerProcess) -> dict[str, Any]:
    """Wait until the server has worked off its queue, then SIGTERM it (exit code 0)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{server.url}/v1/queue") as resp:
                stats: dict[str, Any] = await resp.json()
            if stats["pending"] == 0 and stats["in_flight"] == 0:
                break
            assert loop.time() < deadline, f"queue not drained: {stats}"
            await asyncio.sleep(0.05)
    code = server.terminate(timeout=30)
    assert code == 0, server.output()[-3000:]
    return stats
