"""The dashboard against a daemon with a bearer token: the pages ask for it in a password
field, refuse a wrong one with a word, keep the right one in localStorage, send it in the
Authorization header of every /v1/ call and never in a URL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Daemon, PageOpener
from tests.support import browser as B

pytestmark = pytest.mark.timeout(180)

WRONG = "not-the-token"


def _allow_401(page: Any, guard: B.PageGuard) -> None:
    # Chromium logs each 401 answer itself; asking for the token is what is tested here.
    guard.allow_console(r"status of 401")


def _submit(page: Any, token: str) -> None:
    form = page.locator("form[data-testid=token-form]")
    form.locator("input[type=password][name=token]").fill(token)
    form.locator("button[type=submit], input[type=submit]").first.click()


def test_the_page_asks_refuses_a_wrong_token_and_keeps_the_right_one(
        token_daemon: Daemon, open_page: PageOpener) -> None:
    opened = open_page(token_daemon.url, "/", wait=False, setup=_allow_401)
    page, guard = opened.page, opened.guard
    form = page.locator("form[data-testid=token-form]")
    form.wait_for(state="visible")
    assert form.locator("input[type=password][name=token]").count() == 1
    assert form.locator("button[type=submit], input[type=submit]").count() >= 1
    assert page.evaluate("localStorage.getItem('collector.token')") is None
    assert page.locator("[data-testid=forget-token]").is_hidden()

    _submit(page, WRONG)
    page.locator("form[data-testid=token-form] [data-testid=token-error]").wait_for(
        state="visible")
    error = page.locator("[data-testid=token-error]").inner_text()
    assert error.strip(), "the token error says nothing"
    assert page.evaluate("document.body.dataset.state") != "ready"

    asked = len(guard.api_requests)
    _submit(page, B.TOKEN)
    B.wait_ready(page)
    assert page.locator("form[data-testid=token-form]").count() == 0
    players = token_daemon.api("/v1/players?limit=100")["players"]
    text = page.locator("[data-testid=players]").inner_text()
    shown = B.row_ids(page, "players", "data-player-id")
    assert shown
    for player in players:
        if str(player["id"]) in shown:
            assert player["name"] in text
    assert page.evaluate("localStorage.getItem('collector.token')") == B.TOKEN
    assert page.locator("[data-testid=forget-token]").is_visible()

    after = guard.api_requests[asked:]
    assert after, "no /v1/ call after the token was given"
    for method, url, headers in after:
        assert headers.get("authorization") == f"Bearer {B.TOKEN}", (method, url)
    for method, url, headers in guard.api_requests[:asked]:
        assert headers.get("authorization") in (None, f"Bearer {WRONG}"), (method, url)

    # A reload asks nothing: the token is kept, and sent again.
    before_reload = len(guard.api_requests)
    page.reload(wait_until="domcontentloaded")
    B.wait_ready(page)
    assert page.locator("form[data-testid=token-form]").count() == 0
    again = guard.api_requests[before_reload:]
    assert again
    assert all(h.get("authorization") == f"Bearer {B.TOKEN}" for _, _, h in again), again

    # Another page of the same browser: the data at once.
    match = token_daemon.api("/v1/matches?limit=1")["matches"][0]
    other = open_page(token_daemon.url, f"/matches/{match['id']}", context=opened.context,
                      setup=_allow_401)
    assert other.page.locator("form[data-testid=token-form]").count() == 0
    assert all(h.get("authorization") == f"Bearer {B.TOKEN}"
               for _, _, h in other.guard.api_requests), other.guard.api_requests

    for url in guard.urls + other.guard.urls:
        assert B.TOKEN not in url, f"the token in a URL: {url}"
        assert WRONG not in url, f"a token in a URL: {url}"
    assert B.TOKEN not in page.url


def test_the_live_page_reads_the_feed_with_the_token(token_daemon: Daemon,
                                                     open_page: PageOpener) -> None:
    opened = open_page(token_daemon.url, "/live", wait=False, setup=_allow_401)
    page, guard = opened.page, opened.guard
    page.locator("form[data-testid=token-form]").wait_for(state="visible")
    _submit(page, B.TOKEN)
    B.wait_ready(page)
    live = [(m, u, h) for m, u, h in guard.api_requests if u.endswith("/v1/live")]
    assert live, "the live page never asked GET /v1/live"
    assert live[-1][2].get("authorization") == f"Bearer {B.TOKEN}"
    status = page.locator("[data-testid=live-status]").inner_text().lower()
    assert "live" in status or "ended" in status, status
    for url in guard.urls:
        assert B.TOKEN not in url


def test_forget_token_removes_it(token_daemon: Daemon, open_page: PageOpener) -> None:
    opened = open_page(token_daemon.url, "/system", wait=False, setup=_allow_401)
    page = opened.page
    page.locator("form[data-testid=token-form]").wait_for(state="visible")
    _submit(page, B.TOKEN)
    B.wait_ready(page)
    forget = page.locator("button[data-testid=forget-token]")
    assert forget.is_visible()
    forget.click()
    page.locator("form[data-testid=token-form]").wait_for(state="visible")
    assert page.evaluate("localStorage.getItem('collector.token')") is None
