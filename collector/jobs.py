"""The job a handler receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class Job:
    """One accepted event, as handed to handlers in strict `seq` order."""

    seq: int
    payload: Any
    received_at: float
    attempt: int = 1
    source: str | None = None
    sequence: int | None = None


Handler: TypeAlias = Callable[[Job], Awaitable[object]]
