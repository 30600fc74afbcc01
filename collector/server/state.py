"""Mutable per-application service state (one object, stored once on the app)."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field

from collector.server.guard import Guard


@dataclass(slots=True)
class ServiceState:
    """Readiness, shutdown flag and request counters of one running application."""

    token: str | None = field(default=None, repr=False)
    ready_reason: str = "starting"
    stopping: bool = False
    rejected: Counter[str] = field(default_factory=Counter)
    accepted_events: int = 0
    #: What an operator should know about how the daemon runs (shown by /v1/queue and
    #: `collector status`), e.g. listening on the network without a token.
    warnings: list[str] = field(default_factory=list)
    #: The same, from the settings (e.g. the Host check turned off).
    config_warnings: list[str] = field(default_factory=list)
    #: Host, Origin and CORS rules (collector.server.guard); by default none apply.
    guard: Guard = field(default_factory=lambda: Guard(None))
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _boot: str = field(default_factory=lambda: secrets.token_hex(3))

    def all_warnings(self) -> list[str]:
        """Every warning an operator should see, listening and settings alike."""
        return [*self.config_warnings, *self.warnings]

    def next_request_id(self) -> str:
        """A short id, unique within this process run."""
        return f"{self._boot}-{next(self._ids):x}"
