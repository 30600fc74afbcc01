"""/live in Chromium: idle, then following a match that `collector replay` plays into the
daemon at its own pace (the page's score, clock and boost figures move), and the overlay
variant with its transparent background."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import PageOpener
from tests.support import browser as B
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[ServerProcess]:
    """A daemon that has seen no match yet (stats handler)."""
    server = B.start_daemon(tmp_path / "data")
    yield server
    server.kill()


def _snapshot(page: Any) -> dict[str, Any]:
    """What the live page shows now: scores, clock, status, and each player's figures."""
    snapshot: dict[str, Any] = page.evaluate("""() => {
        const text = (root, sel) => root.querySelector(sel)?.textContent.trim() ?? null;
        const score = document.querySelector('[data-testid=live-score]');
        return {
            scores: score ? [...score.querySelectorAll('[data-team]')].map(
                e => [e.dataset.team, e.textContent.trim()]) : [],
            clock: text(document, '[data-testid=live-clock]'),
            status: text(document, '[data-testid=live-status]'),
            players: [...document.querySelectorAll('[data-testid=live-player]')].map(p => ({
                id: p.dataset.playerId, team: p.dataset.team,
                name: text(p, '[data-field=name]'), boost: text(p, '[data-field=boost]'),
                speed: text(p, '[data-field=speed]')})),
            events: [...document.querySelectorAll('[data-testid=live-events] li')].map(
                e => e.textContent.trim()),
        };
    }""")
    return snapshot


def test_live_page_waits_while_no_match_is_played(fresh_daemon: ServerProcess,
                                                  open_page: PageOpener) -> None:
    page = open_page(fresh_daemon.url, "/live").page
    assert page.evaluate("document.body.dataset.page") == "live"
    status = page.locator("[data-testid=live-status]").inner_text()
    assert "waiting" in status.lower(), status
    assert page.locator("[data-testid=live-player]").count() == 0
    B.screenshots(page, "live-idle")


def test_live_page_follows_a_match_being_played(fresh_daemon: ServerProcess,
                                                open_page: PageOpener,
                                                tmp_path: Path) -> None:
    base = fresh_daemon.url
    page = open_page(base, "/live").page
    recording = B.write_jsonl(tmp_path / "live.jsonl", B.live_match(seconds=12))
    # About 150 messages at 25 a second: six seconds of a match going on.
    replay = B.replay(base, recording, fast=False, rate=25, wait=False)
    try:
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=live-player]').length === 2",
            timeout=B.WAIT_MS)
        first = _snapshot(page)
        assert "live" in (first["status"] or "").lower(), first
        assert {p["name"] for p in first["players"]} == {"Ada", "Brick"}, first
        assert {p["team"] for p in first["players"]} == {"0", "1"}, first
        for player in first["players"]:
            assert player["id"], player
            assert re.fullmatch(r"\d+", player["boost"] or ""), (
                f"{player['name']}'s boost {player['boost']!r} is not a number")
        latest: list[dict[str, Any]] = []

        def moved() -> bool:
            latest[:] = [_snapshot(page)]
            now = latest[0]
            boosts = [p["boost"] for p in now["players"]] != [p["boost"] for p in
                                                              first["players"]]
            return now["clock"] != first["clock"] and boosts
        B.poll(moved, timeout=20, what="the clock and the boost figures to move", every=0.2,
               page=page)
        second = latest[0]
        assert re.fullmatch(r"\+?\d+:\d\d", second["clock"] or ""), second["clock"]
        for player in second["players"]:
            assert re.fullmatch(r"\d+", player["boost"] or ""), player
            assert re.search(r"\d", player["speed"] or ""), player
        # Each player's boost bar follows the number.
        bars = page.locator("[data-testid=live-player]").count()
        assert bars == 2
    finally:
        out, _ = replay.communicate(timeout=60)
    assert replay.returncode == 0, out

    # The whole match is in: Brick's goal is on the board and in the events.
    def scored() -> bool:
        snap = _snapshot(page)
        return dict(snap["scores"]).get("1") == "1"
    B.poll(scored, timeout=15, what="Orange's goal on the live score", every=0.2, page=page)
    final = _snapshot(page)
    assert dict(final["scores"]).get("0") == "0", final["scores"]
    assert any("Brick" in e for e in final["events"]), final["events"]
    match = B.get_json(f"{base}/v1/matches?limit=1")["matches"][0]
    assert [t["score"] for t in match["teams"]] == [0, 1]
    B.screenshots(page, "live")


def test_overlay_has_a_transparent_background(fresh_daemon: ServerProcess,
                                              open_page: PageOpener) -> None:
    page = open_page(fresh_daemon.url, "/live?overlay=1").page
    assert page.evaluate("document.body.classList.contains('overlay')")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
    html = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert html == "rgba(0, 0, 0, 0)", f"the html element paints {html} behind the overlay"
    B.screenshots(page, "live-overlay")
