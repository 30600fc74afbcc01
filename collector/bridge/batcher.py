"""The Batcher: messages from the game into batches, closed by count, bytes or age.
"""

import asyncio
import re
import socket
from collections.abc import Callable

import orjson

from collector.bridge.spool import Batch


def _one_line(raw: bytes) -> bytes:
    """The object on one line (NDJSON); the bytes as received whenever they already are."""
    if b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw))
    return raw


def _host_label() -> str:
    label = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:32]
    return label.lower() or "host"


# -- batching -------------------------------------------------------------------------------


class Batcher:
    """Gathers one source's events into batches bounded in count, bytes and age."""

    def __init__(
        self,
        emit: Callable[[Batch], None],
        *,
        max_events: int = 200,
        max_bytes: int = 512 * 1024,
        max_delay: float = 0.25,
    ) -> None:
        self._emit = emit
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_delay = max_delay
        self._source: str | None = None
        self._next_sequence = 1
        self._events: list[bytes] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def next_sequence(self) -> int:
        """The number the next event will get."""
        return self._next_sequence

    def start(self, source: str, *, first_sequence: int = 1) -> None:
        """Close the open batch; number what follows as `source`, from `first_sequence`."""
        self.flush()
        self._source = source
        self._next_sequence = first_sequence

    def add(self, raw: bytes) -> None:
        """Add one JSON object (bytes); may close and emit the open batch."""
        if self._source is None:
            raise RuntimeError("Batcher.start() first")
        event = _one_line(raw)
        if self._events and self._bytes + len(event) + 1 > self._max_bytes:
            self.flush()
        self._events.append(event)
        self._bytes += len(event) + 1
        if len(self._events) >= self._max_events or self._bytes >= self._max_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self.flush)

    def flush(self) -> None:
        """Close and emit the open batch, if it holds anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._events or self._source is None:
            return
        batch = Batch(self._source, self._next_sequence, tuple(self._events))
        self._next_sequence += len(self._events)
        self._events = []
        self._bytes = 0
        self._emit(batch)


# -- posting --------------------------------------------------------------------------------
