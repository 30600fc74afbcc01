"""No silent skips in CI: with CI=true, a skip not on ALLOWED_SKIPS_IN_CI fails the run."""

from __future__ import annotations

from typing import Any

import pytest

ALLOWED_SKIPS_IN_CI: dict[str, str] = {}


def unexpected_skips(skipped: list[tuple[str, str]],
                     allowed: dict[str, str] = ALLOWED_SKIPS_IN_CI) -> list[tuple[str, str]]:
    """The (test id, reason) pairs of `skipped` that no prefix in `allowed` covers."""
    return [(nodeid, reason) for nodeid, reason in skipped
            if not any(nodeid.startswith(prefix) for prefix in allowed)]


class SkipGate:
    """Counts skipped tests; with CI=true, a skip not on ALLOWED_SKIPS_IN_CI fails the run."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
            self.skipped.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.strict and unexpected_skips(self.skipped) \
                and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.strict:
            return
        bad = unexpected_skips(self.skipped)
        if bad:
            terminalreporter.section("skipped in CI, not on ALLOWED_SKIPS_IN_CI: run failed",
                                     red=True)
            for nodeid, reason in bad:
                terminalreporter.write_line(f"{nodeid}: {reason}")
        else:
            terminalreporter.write_line(
                f"CI=true: every collected test ran ({len(self.skipped)} allowed skip(s))")
