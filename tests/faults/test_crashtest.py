"""CI's short crash loop: scripts/crashtest.py --cycles 3 must lose nothing and keep order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.slow

ROOT = REPO


def crashtest(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run the script with --json; (exit code, figures, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "crashtest.py"), "--json", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False,
    )
    assert result.stdout.strip(), f"no figures printed; stderr: {result.stderr[-3000:]}"
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return result.returncode, figures, result.stderr


@pytest.mark.parametrize("ack_interval_ms", [50, 0])
def test_three_kill_cycles_lose_nothing_and_keep_order(ack_interval_ms: int) -> None:
    code, figures, stderr = crashtest("--cycles", "3", "--ack-interval-ms", str(ack_interval_ms))
    context = f"seed={figures['seed']} figures={figures} stderr={stderr[-2000:]}"
    assert figures["acknowledged"] > 0, context  # the load really ran
    assert figures["lost"] == 0, context
    assert figures["out_of_order"] == 0, context
    assert figures["duplicates_unexpected"] == 0, context
    assert figures["skipped"] == 0, context
    assert figures["stalled"] == 0, context
    assert figures["processed"] == figures["acknowledged"], context
    assert figures["ok"] is True, context
    assert code == 0, context
    # Every handler call is a first handling or an allowed replay, nothing else.
    assert figures["handler_calls"] == figures["last_seq"] + figures["duplicates_replayed"], context
