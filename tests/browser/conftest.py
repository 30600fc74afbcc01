"""The dashboard in a real headless Chromium (Debian's), driven by Playwright's sync API.

The daemons are `collector serve` subprocesses, so the tests are plain sync functions and
never touch pytest-aiohttp's event loop. One browser for the package, a new context (fresh
cookies and localStorage) per test. Every page a test opens is guarded: at teardown the
test fails on a console error, an uncaught exception, or a request to any origin but the
daemon's (such requests are aborted before they leave, and recorded).

Missing Chromium or Playwright is a pytest.skip, which the CI gate (tests/support/ci.py)
turns into a failure under CI=true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import browser as B
from tests.support.season import build
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, once for the browser tests (package scope: while
    Playwright's sync API runs, its event loop is the thread's, and the async tests that
    come after must find none)."""
    B.chromium_path()  # skip before starting the driver when there is no Chromium
    playwright = B.start_playwright()
    try:
        chromium = B.launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@dataclass
class Opened:
    """A page opened by :func:`open_page`, its guard, and the context it lives in."""

    page: Page
    guard: B.PageGuard
    context: BrowserContext


@dataclass
class PageOpener:
    """Opens guarded pages on a daemon; every guard is checked at the test's teardown."""

    browser: Browser
    opened: list[Opened] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)

    def __call__(self, base: str, path: str = "/", *, context: BrowserContext | None = None,
                 wait: bool = True, viewport: ViewportSize | None = None,
                 setup: Callable[[Page, B.PageGuard], None] | None = None) -> Opened:
        """Open ``base + path`` in a new page (of a new context unless one is given),
        guarded; wait for data-state ready unless ``wait`` is False."""
        if context is None:
            context = self.browser.new_context(viewport=viewport or B.DESKTOP,
                                               service_workers="block")
            context.set_default_timeout(B.WAIT_MS)
            self.contexts.append(context)
        page = context.new_page()
        guard = B.PageGuard(origin=base)
        guard.attach(page)
        if setup is not None:
            setup(page, guard)
        opened = Opened(page, guard, context)
        self.opened.append(opened)
        if path is not None:
            page.goto(base + path, wait_until="domcontentloaded")
            if wait:
                B.wait_ready(page)
        return opened

    def close(self) -> list[str]:
        problems = []
        for opened in self.opened:
            for line in opened.guard.problems():
                problems.append(f"{opened.page.url}: {line}")
        for context in self.contexts:
            context.close()
        return problems


@pytest.fixture
def open_page(browser: Browser) -> Iterator[PageOpener]:
    """``open_page(base, path)``: a guarded page; the guard's checks run at teardown."""
    opener = PageOpener(browser)
    yield opener
    problems = opener.close()
    if problems:
        details = []
        for opened in opener.opened:
            details += [f"(console {k}: {t})" for k, t in opened.guard.console
                        if k == "warning"]
            details += [f"(failed request: {u} {why})" for u, why in opened.guard.failed]
        pytest.fail("a page misbehaved:\n" + "\n".join(problems + details), pytrace=False)


# -- the daemons --------------------------------------------------------------------------------

@dataclass
class Daemon:
    """A running daemon and what was fed into it."""

    server: ServerProcess
    token: str | None = None
    planned: list[B.Planned] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, path: str, **kwargs: Any) -> Any:
        return B.get_json(self.url + path, token=self.token, **kwargs)


def _feed(daemon: Daemon, work: Path) -> None:
    """The real recording (through `collector replay`), then the synthetic league."""
    B.replay(daemon.url, B.RECORDING, token=daemon.token)
    for n, planned in enumerate(daemon.planned):
        B.replay(daemon.url, B.write_jsonl(work / f"league-{n}.jsonl", planned.messages),
                 token=daemon.token)
    before = 5  # the season built into stats.db before the start
    B.wait_applied(daemon.url, token=daemon.token, matches=before + 1 + len(daemon.planned))


def _started(tmp: Path, *, token: str | None = None) -> Daemon:
    data = tmp / "data"
    data.mkdir(parents=True)
    # Five matches of Ann, Bob and Cid at known times: sessions with wins, losses and a
    # streak (tests/support/season.py), written before the daemon opens stats.db.
    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, build(data)).result(timeout=60)
    env = {"COLLECTOR_SERVER_TOKEN": token} if token else None
    server = B.start_daemon(data, env=env)
    daemon = Daemon(server, token=token, planned=B.league())
    try:
        _feed(daemon, tmp)
    except BaseException:
        server.kill()
        raise
    return daemon


@pytest.fixture(scope="package")
def stats_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon (stats handler, no token) holding the season, the real recording and the
    synthetic league; the worker has applied all of it."""
    daemon = _started(tmp_path_factory.mktemp("stats-daemon"))
    yield daemon
    daemon.server.kill()


@pytest.fixture(scope="package")
def token_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The same data behind a bearer token (COLLECTOR_SERVER_TOKEN)."""
    daemon = _started(tmp_path_factory.mktemp("token-daemon"), token=B.TOKEN)
    yield daemon
    daemon.server.kill()


@pytest.fixture(scope="package")
def artifacts() -> Path:
    """Where the screenshots go (build/artifacts/screenshots unless $COLLECTOR_ARTIFACTS)."""
    return B.artifacts_dir()
