"""Each dashboard page in Chromium against a daemon holding known matches: it reaches
data-state "ready", shows what the API says, and draws its charts (not blank).

The DOM the tests read is the dashboard's contract (data-testid, data-field, data-team,
data-chart, data-drawn). The guard of every page (conftest.py) also fails a test on a
console error, an uncaught exception or a request to another host.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Daemon, PageOpener
from tests.support import browser as B

pytestmark = pytest.mark.timeout(180)

TEAM_FALLBACK = {0: "#1873ff", 1: "#c26418"}
MATCH_CHARTS = ("boost", "boost-bands", "speed", "movement")


def _hex_to_rgb(colour: str) -> str:
    colour = colour.lstrip("#")
    r, g, b = (int(colour[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


def _assert_drawn(page: Any, name: str) -> None:
    B.wait_chart(page, name)
    colours = B.canvas_colours(page, name)
    assert colours > 1, f"chart {name!r} says it is drawn but its canvas is blank"


# -- home -----------------------------------------------------------------------------------

def test_home_lists_matches_sessions_and_players(stats_daemon: Daemon,
                                                 open_page: PageOpener) -> None:
    page = open_page(stats_daemon.url, "/").page
    assert page.evaluate("document.body.dataset.page") == "home"
    hrefs = page.eval_on_selector_all("nav[data-testid=nav] a",
                                      "links => links.map(a => a.getAttribute('href'))")
    assert {"/", "/live", "/system"} <= set(hrefs), hrefs

    everything = stats_daemon.api("/v1/matches?limit=100")["matches"]
    # Every match, newest first: the first page, then "more" until the API has no next.
    for _ in range(20):
        more = page.locator("button[data-testid=more-matches]")
        if not more.count() or not more.is_visible():
            break
        shown = len(B.row_ids(page, "recent-matches", "data-match-id"))
        more.click()
        page.wait_for_function(
            "n => document.querySelectorAll("
            "'[data-testid=recent-matches] tr[data-match-id]').length > n", arg=shown)
    ids = B.row_ids(page, "recent-matches", "data-match-id")
    assert ids == [str(m["id"]) for m in everything]
    for match_id in ids:
        link = page.locator(f"tr[data-match-id='{match_id}'] a[href='/matches/{match_id}']")
        assert link.count() >= 1, f"match row {match_id} has no link to its page"

    # The recording stops mid-match: a live match, so the live card shows, with its score.
    live = [m for m in everything if m["ended_at"] is None]
    assert live
    card = page.locator("[data-testid=live-card]")
    assert card.is_visible()
    assert card.locator("a[href='/live']").count() + (
        1 if card.evaluate("e => e.closest('a[href=\"/live\"]') !== null") else 0) >= 1

    sessions = {s["id"] for s in stats_daemon.api("/v1/sessions?limit=100")["sessions"]}
    session_ids = B.row_ids(page, "recent-sessions", "data-session-id")
    assert session_ids, "no session rows"
    assert set(session_ids) <= sessions
    for session_id in session_ids:
        assert page.locator(f"[data-testid=recent-sessions] tr[data-session-id='{session_id}'] "
                            f"a[href='/sessions/{session_id}']").count() >= 1

    players = stats_daemon.api("/v1/players?limit=100")["players"]
    player_ids = B.row_ids(page, "players", "data-player-id")
    assert player_ids, "no player rows"
    assert set(player_ids) <= {str(p["id"]) for p in players}
    text = page.locator("[data-testid=players]").inner_text()
    for player in players:
        if str(player["id"]) in player_ids:
            assert player["name"] in text
            assert page.locator(f"[data-testid=players] tr[data-player-id='{player['id']}'] "
                                f"a[href='/players/{player['id']}']").count() >= 1
    for name in ("Ada", "Brick", "Zone Killa", "nickm"):
        assert name in text, f"{name} is not among the players shown"
    B.screenshots(page, "home")


# -- match ----------------------------------------------------------------------------------

@pytest.mark.parametrize("guid", [
    "D0E13333000000000000000000000004",  # the 3v3: assisted goals, demolitions
    B.RECORDING_GUID,                    # the real recording: live, one goal
    "D0E10000000000000000000000000005",  # a duel with four goals
], ids=["3v3", "recording", "duel"])
def test_match_page_shows_the_match(stats_daemon: Daemon, open_page: PageOpener,
                                    guid: str) -> None:
    match = stats_daemon.api(f"/v1/matches/{guid}")
    page = open_page(stats_daemon.url, f"/matches/{match['id']}").page
    assert page.evaluate("document.body.dataset.page") == "match"

    board = page.locator("[data-testid=scoreboard]")
    for team in (0, 1):
        table = board.locator(f"table[data-team='{team}']")
        assert table.count() == 1, f"no scoreboard table for team {team}"
        lines = [p for p in match["players"] if p["team"] == team]
        ids = table.locator("tr[data-player-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.playerId)")
        assert sorted(ids) == sorted(str(p["player_id"]) for p in lines)
        for line in lines:
            row = table.locator(f"tr[data-player-id='{line['player_id']}']")
            text = row.inner_text()
            assert line["name"] in text
            shown = B.numbers(text.replace(line["name"], " "))
            for key in ("score", "goals", "assists", "saves", "shots", "demos"):
                assert line[key] in shown, f"{line['name']}'s {key} {line[key]} not in {text!r}"
        score = page.locator(f"[data-testid=team-score][data-team='{team}']")
        want = next(t["score"] for t in match["teams"] if t["num"] == team)
        assert B.numbers(score.inner_text()) == [want]

    goals = page.locator("[data-testid=goals] li[data-testid=goal]")
    assert goals.count() == len(match["goals"])
    for n, goal in enumerate(match["goals"]):
        text = goals.nth(n).inner_text()
        assert goal["scorer"] in text
        if goal["assister"]:
            assert goal["assister"] in text
        if goal["speed"]:
            assert "km/h" in text

    bar = page.locator("[data-testid=possession]")
    total = sum(t["possession_s"] or 0 for t in match["teams"])
    if total:
        segments = bar.locator("[data-team]")
        assert segments.count() == 2
        boxes = [segments.nth(i).bounding_box() for i in range(2)]
        whole = sum(box["width"] for box in boxes if box is not None)
        assert whole > 0, "the possession bar is not shown"
        for team in match["teams"]:
            box = bar.locator(f"[data-team='{team['num']}']").bounding_box()
            assert box is not None
            share = (team["possession_s"] or 0) / total
            assert abs(box["width"] - share * whole) <= max(1.0, 0.01 * whole), (
                f"team {team['num']}: {box['width']} px of {whole}, API share {share:.3f}")

    for name in MATCH_CHARTS:
        _assert_drawn(page, name)
    B.screenshots(page, f"match-{guid[:8].lower()}")


@pytest.mark.parametrize("guid", ["D0E13333000000000000000000000004", B.RECORDING_GUID],
                         ids=["3v3", "recording"])
def test_match_scoreboard_tables_wear_the_team_colours(stats_daemon: Daemon,
                                                       open_page: PageOpener,
                                                       guid: str) -> None:
    """teams[].color_primary when the API has one, else blue #1873ff / orange #c26418."""
    match = stats_daemon.api(f"/v1/matches/{guid}")
    page = open_page(stats_daemon.url, f"/matches/{match['id']}").page
    for team in (0, 1):
        table = page.locator(f"[data-testid=scoreboard] table[data-team='{team}']")
        colour = next((t.get("color_primary") for t in match["teams"] if t["num"] == team),
                      None) or TEAM_FALLBACK[team]
        used = table.evaluate("""t => {
            const out = [];
            for (const e of [t, ...t.querySelectorAll('*')]) {
                const s = getComputedStyle(e);
                out.push(s.color, s.backgroundColor, s.borderTopColor, s.borderLeftColor,
                         s.borderBottomColor, s.outlineColor,
                         s.getPropertyValue('--team').trim(),
                         s.getPropertyValue('--team-color').trim());
            }
            return out;
        }""")
        assert _hex_to_rgb(colour) in used or colour.lower() in [u.lower() for u in used], (
            f"team {team}'s table shows no {colour} in its styles")


def test_match_goals_show_their_game_time(stats_daemon: Daemon,
                                          open_page: PageOpener) -> None:
    """Each goal of the timeline says when in the game it fell, as the game clock showed
    it (m:ss, +m:ss in overtime), besides scorer, assister and speed."""
    match = stats_daemon.api("/v1/matches/D0E13333000000000000000000000004")
    assert all(goal["clock"] is not None for goal in match["goals"])
    page = open_page(stats_daemon.url, f"/matches/{match['id']}").page
    goals = page.locator("[data-testid=goals] li[data-testid=goal]")
    assert goals.count() == len(match["goals"])
    for n, goal in enumerate(match["goals"]):
        seconds = goal["clock"]
        shown = f"{'+' if goal['overtime'] else ''}{seconds // 60}:{seconds % 60:02d}"
        clock = goals.nth(n).locator("[data-field=clock]").inner_text()
        assert clock == shown, f"goal {n + 1}: {clock!r}, the API says {shown!r}"


def test_unknown_match_shows_the_error(stats_daemon: Daemon, open_page: PageOpener) -> None:
    def allow_404(page: Any, guard: B.PageGuard) -> None:
        # Chromium logs the 404 answer itself; that is the point of this test.
        guard.allow_console(r"status of 404")

    page = open_page(stats_daemon.url, "/matches/987654", wait=False, setup=allow_404).page
    page.wait_for_function("() => document.body.dataset.state !== 'loading'", timeout=B.WAIT_MS)
    assert page.evaluate("document.body.dataset.state") == "error"
    error = page.locator("[data-testid=error]")
    assert error.is_visible()
    text = error.inner_text()
    assert re.search(r"no (such )?match|match .*not found", text, re.I), text
    B.screenshots(page, "match-unknown")


# -- player ---------------------------------------------------------------------------------

def _player_matches(daemon: Daemon, player: dict[str, Any]) -> list[str]:
    try:
        listed = daemon.api(f"/v1/players/{player['id']}/matches?limit=100")
    except Exception:  # noqa: BLE001 - the route is new; fall back on recent_matches
        return [str(m["id"]) for m in player["recent_matches"]]
    rows = listed.get("matches", listed) if isinstance(listed, dict) else listed
    return [str(m["id"]) for m in rows]


def test_player_page_career_matches_sessions_and_trend(stats_daemon: Daemon,
                                                      open_page: PageOpener) -> None:
    ada = next(p for p in stats_daemon.api("/v1/players?limit=100")["players"]
               if p["name"] == "Ada")
    player = stats_daemon.api(f"/v1/players/{ada['id']}")
    page = open_page(stats_daemon.url, f"/players/{ada['id']}").page
    assert page.evaluate("document.body.dataset.page") == "player"
    assert "Ada" in page.locator("body").inner_text()

    career = B.numbers(page.locator("[data-testid=career]").inner_text())
    for key in ("matches", "wins", "goals"):
        assert player[key] in career, f"career {key} {player[key]} not shown: {career}"
    boost_avg = player["stats"]["boost_avg"]
    assert any(abs(n - boost_avg) < 0.1 for n in career), (
        f"no derived statistic (boost_avg {boost_avg}) among the career figures {career}")

    assert B.row_ids(page, "player-matches", "data-match-id") == _player_matches(
        stats_daemon, player)
    sessions = stats_daemon.api(f"/v1/sessions?player={ada['id']}&limit=100")["sessions"]
    assert sorted(B.row_ids(page, "player-sessions", "data-session-id")) == sorted(
        s["id"] for s in sessions)

    # The trend: drawn for the chosen statistic, and drawn again for another one.
    select = page.locator("select[data-testid=trend-stat]")
    _assert_drawn(page, "trend")
    first = select.input_value()
    canvas = page.locator("canvas[data-chart=trend]")
    assert canvas.get_attribute("data-stat") == first
    before = B.canvas_digest(page, "trend")
    options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert len(options) >= 2, f"one statistic only to choose from: {options}"
    # A statistic whose values differ from the first one's across Ada's matches.
    preferred = [o for o in ("goals", "score", "boost_avg", "speed_avg", "bpm")
                 if o in options and o != first]
    other = (preferred or [o for o in options if o != first])[0]
    select.select_option(other)
    page.wait_for_selector(f"canvas[data-chart=trend][data-stat='{other}'][data-drawn='1']",
                           state="attached", timeout=B.WAIT_MS)
    changed: list[str] = []

    def redrawn() -> bool:
        changed[:] = [B.canvas_digest(page, "trend")]
        return changed[0] != before

    B.poll(redrawn, timeout=10, what=f"the trend chart to change from {first!r} to {other!r}",
           page=page)
    after = changed[0]
    assert after != before, f"the trend chart did not change from {first!r} to {other!r}"
    assert B.canvas_colours(page, "trend") > 1
    B.screenshots(page, "player-ada")


# -- session --------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["Ann", "Ada"])
def test_session_page_summary_matches_and_averages(stats_daemon: Daemon,
                                                   open_page: PageOpener, who: str) -> None:
    player = next(p for p in stats_daemon.api("/v1/players?limit=100")["players"]
                  if p["name"] == who)
    sessions = stats_daemon.api(f"/v1/sessions?player={player['id']}&limit=100")["sessions"]
    newest = stats_daemon.api(f"/v1/sessions/{sessions[0]['id']}")
    page = open_page(stats_daemon.url, f"/sessions/{newest['id']}").page
    assert page.evaluate("document.body.dataset.page") == "session"

    summary = page.locator("[data-testid=session-summary]")
    for key in ("wins", "losses", "matches"):
        value = newest[key]
        shown = B.numbers(summary.locator(f"[data-field={key}]").inner_text())
        want = len(value) if isinstance(value, list) else value
        assert shown == [want], f"{key}: {shown} shown, the API says {want}"
    streak = summary.locator("[data-field=streak]").inner_text()
    if newest["streak"]:
        assert newest["streak"]["kind"] in streak
        assert str(newest["streak"]["length"]) in streak
    assert B.row_ids(page, "session-matches", "data-match-id") == [
        str(m["id"]) for m in newest["matches"]]
    averages = page.locator("[data-testid=session-averages]")
    assert averages.is_visible()
    avg_score = newest["averages"]["score"]
    shown = B.numbers(averages.inner_text())
    assert any(abs(n - avg_score) < 1 for n in shown), (
        f"the average score {avg_score} is not in {shown}")
    B.screenshots(page, f"session-{who.lower()}")
