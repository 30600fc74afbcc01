"""CI fails on a skip that is not on the allow-list (tests/conftest.py's SkipGate)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import unexpected_skips
from tests.support.paths import REPO

SKIPPING = '''
import pytest

def test_runs():
    assert True

def test_cannot_run_here():
    pytest.skip("the tool it needs is missing")
'''


def _pytest(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(tmp_path / "test_skipping.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )


@pytest.mark.slow
def test_a_skip_fails_the_run_in_ci_and_is_named(tmp_path: Path) -> None:
    result = _pytest(tmp_path, ci="true")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "skipped in CI, not on ALLOWED_SKIPS_IN_CI: run failed" in result.stdout
    assert "test_skipping.py::test_cannot_run_here: Skipped: the tool it needs is missing" \
        in result.stdout


@pytest.mark.slow
def test_outside_ci_a_skip_is_only_reported(tmp_path: Path) -> None:
    result = _pytest(tmp_path, ci=None)
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "ALLOWED_SKIPS_IN_CI" not in result.stdout


def test_the_allow_list_matches_by_test_id_prefix() -> None:
    skipped = [("tests/test_a.py::test_one", "no disk"), ("tests/test_b.py::test_two", "no x")]
    assert unexpected_skips(skipped, {"tests/test_a.py::": "why"}) == [skipped[1]]
    assert unexpected_skips(skipped, {}) == skipped
    assert unexpected_skips([], {}) == []
