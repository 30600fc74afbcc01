"""Where things are: the repository and the recorded fixtures."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CAPTURE_JSONL = FIXTURES / "rl-stats-api" / "player-capture.jsonl"
CAPTURE_STREAM = FIXTURES / "rl-stats-api" / "player-capture.stream"
