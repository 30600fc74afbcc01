"""/system in Chromium: the queue's figures as GET /v1/queue gives them, the dead letters
with Retry and Drop behind a confirm() (dismissed: nothing is sent; accepted: done, as
GET /v1/dead shows), and the metrics.

The daemon runs the stats handler and `tests.support.browser:refuse_marked`, which
dead-letters events marked "refuse" while a flag file exists: the test removes the file
to let a retried dead letter through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import PageOpener
from tests.support import browser as B
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A daemon holding three dead letters (seqs in order), and the flag that made them."""
    flag = tmp_path / "refuse"
    flag.touch()
    server = B.start_daemon(
        tmp_path / "data",
        args=("--handler", "stats", "--handler", "tests.support.browser:refuse_marked"),
        env={B.REFUSE_ENV: str(flag)})
    try:
        B.post_events(server.url, [{"refuse": True, "n": n} for n in (1, 2, 3)])
        B.post_events(server.url, [{"n": 4}])
        B.poll(lambda: B.get_json(f"{server.url}/v1/dead")["total"] == 3, timeout=30,
               what="three dead letters")
        B.wait_applied(server.url)
        yield server, flag
    finally:
        server.kill()


def _dead(base: str) -> list[int]:
    return [d["seq"] for d in B.get_json(f"{base}/v1/dead?limit=100")["dead"]]


def _changes(guard: B.PageGuard) -> list[tuple[str, str]]:
    return [(m, u) for m, u, _ in guard.api_requests if m != "GET"]


def _next_refresh(page: Any) -> None:
    """Wait for the page's next GET of the dead letters (it refreshes every 2 s): a
    change it would have sent after a click has been sent by then."""
    with page.expect_request(lambda r: r.method == "GET" and "/v1/dead" in r.url,
                             timeout=10_000):
        pass


def _click_with_dialog(page: Any, selector: str, *, accept: bool) -> str:
    messages: list[str] = []

    def answer(dialog: Any) -> None:
        messages.append(f"{dialog.type}: {dialog.message}")
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()
    page.once("dialog", answer)
    page.locator(selector).click()
    B.poll(lambda: bool(messages), timeout=5, what="the confirm dialog", page=page)
    assert messages[0].startswith("confirm:"), messages
    return messages[0]


def test_system_page_shows_the_queue_figures(refusing: tuple[ServerProcess, Path],
                                            open_page: PageOpener) -> None:
    server, _ = refusing
    base = server.url
    page = open_page(base, "/system").page
    assert page.evaluate("document.body.dataset.page") == "system"
    page.locator("[data-testid=dead-letters] tr[data-seq]").first.wait_for()
    B.screenshots(page, "system")  # with its three dead letters
    queue = B.get_json(f"{base}/v1/queue")
    figures = page.locator("[data-testid=queue]")
    for field, key in (("pending", "pending"), ("processed", "processed_total"),
                       ("dead", "dead")):
        shown = B.numbers(figures.locator(f"[data-field={field}]").inner_text())
        assert shown[:1] == [queue[key]], f"{field}: {shown}, /v1/queue says {queue[key]}"
    for field in ("rate", "oldest", "worker"):
        assert figures.locator(f"[data-field={field}]").count() == 1, (
            f"no [data-field={field}] in [data-testid=queue]")
    assert "running" in figures.locator("[data-field=worker]").inner_text()
    metrics = page.locator("[data-testid=metrics]").inner_text()
    assert B.numbers(metrics), f"no figure from /metrics: {metrics!r}"


def test_system_page_retries_and_drops_dead_letters(refusing: tuple[ServerProcess, Path],
                                                    open_page: PageOpener) -> None:
    server, flag = refusing
    base = server.url
    opened = open_page(base, "/system")
    page, guard = opened.page, opened.guard

    seqs = _dead(base)
    assert len(seqs) == 3
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=dead-letters] tr[data-seq]')"
        ".length === 3", timeout=B.WAIT_MS)
    assert B.row_ids(page, "dead-letters", "data-seq") == [str(s) for s in seqs]
    dead_text = page.locator("[data-testid=dead-letters]").inner_text()
    assert "refused event 1" in dead_text, "the dead letter's error is not shown"
    figures = page.locator("[data-testid=queue]")

    first, second, third = seqs
    # Retry, dismissed: nothing is sent, the dead letter stays.
    _click_with_dialog(page, f"tr[data-seq='{first}'] button[data-action=retry]", accept=False)
    _next_refresh(page)
    assert _changes(guard) == []
    assert _dead(base) == seqs

    # Retry, accepted (and the handler now lets it through): it leaves the dead letters.
    flag.unlink()
    _click_with_dialog(page, f"tr[data-seq='{first}'] button[data-action=retry]", accept=True)
    B.poll(lambda: _dead(base) == [second, third], timeout=10, what="the retried letter to go",
           page=page)
    assert len(_changes(guard)) == 1, _changes(guard)
    assert _changes(guard)[0][0] == "POST", _changes(guard)
    page.locator(f"[data-testid=dead-letters] tr[data-seq='{first}']").wait_for(
        state="detached")
    B.wait_applied(base)

    # Drop, dismissed: nothing; accepted: gone for good.
    _click_with_dialog(page, f"tr[data-seq='{second}'] button[data-action=drop]", accept=False)
    _next_refresh(page)
    assert len(_changes(guard)) == 1
    assert _dead(base) == [second, third]
    _click_with_dialog(page, f"tr[data-seq='{second}'] button[data-action=drop]", accept=True)
    B.poll(lambda: _dead(base) == [third], timeout=10, what="the dropped letter to go",
           page=page)
    assert _changes(guard)[-1][0] in ("DELETE", "POST"), _changes(guard)
    page.locator(f"[data-testid=dead-letters] tr[data-seq='{second}']").wait_for(
        state="detached")

    # Drop all, accepted: none left, and the page's figures say so.
    _click_with_dialog(page, "button[data-action=drop-all]", accept=True)
    B.poll(lambda: _dead(base) == [], timeout=10, what="no dead letter left", page=page)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=dead-letters] tr[data-seq]')"
        ".length === 0", timeout=B.WAIT_MS)
    B.poll(lambda: B.numbers(figures.locator("[data-field=dead]").inner_text())[:1] == [0],
           timeout=10, what="the dead figure to show 0", page=page)
