"""Exponential backoff with jitter: one rule for the worker's retries and the bridge's."""

from __future__ import annotations

import math
import random


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before try `attempt` + 1: "equal jitter", between half and all of
    min(cap, base * 2**(attempt-1))."""
    # ldexp with a bounded exponent: base * 2**n overflows a float past n = 1023.
    ceiling = min(cap, math.ldexp(base, min(attempt - 1, 1000)))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))
