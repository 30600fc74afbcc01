"""The browser tests' helpers: Debian's Chromium under Playwright, a guard on every page,
daemons fed with known matches, and a handler that makes dead letters on demand.

Nothing here imports Playwright at module level: a `collector serve` subprocess loads
:func:`refuse_marked` from this module by spec, and the CI gate must see a clean
``pytest.skip`` (not an ImportError) when Playwright or Chromium is missing.

Chromium is Debian's (``/usr/bin/chromium``, or ``$COLLECTOR_CHROMIUM``), never a
Playwright download: ``playwright install`` cannot work on a machine without internet.
It is started headless with the switches that keep it from calling Google's hosts, and
Playwright gives every launch a fresh temporary profile (``--user-data-dir``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from collector import Job, PermanentError
from tests.support.paths import REPO
from tests.support.server import ServerProcess
from tests.support.synthetic import Car, Player, Stream

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Page,
        Playwright,
        Request,
        Route,
        ViewportSize,
    )

CHROMIUM_ENV = "COLLECTOR_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_ENV = "COLLECTOR_ARTIFACTS"
DEFAULT_ARTIFACTS = REPO / "build" / "artifacts" / "screenshots"
#: Switches that keep a headless Chromium quiet on a machine with no internet: no
#: sandbox (root, containers), no GPU, and none of the calls home it makes by itself.
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
#: Every wait of the browser tests is bounded by this (ms): no test may hang.
WAIT_MS = 15_000
#: The real recording in the repository (attribution: its README.md beside it).
RECORDING = REPO / "tests" / "fixtures" / "rl-stats-api" / "player-capture.stream"
RECORDING_GUID = "1F7ED23011F1435166EBAB919DB5566D"
TOKEN = "browser-secret-7f3a"


# -- Chromium ---------------------------------------------------------------------------------

def chromium_path() -> str:
    """The Chromium binary to drive; pytest.skip (a failure under CI=true) when absent."""
    path = os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    found = shutil.which(path)
    if found is None:
        pytest.skip(f"no Chromium at {path} (install Debian's `chromium`, or set "
                    f"{CHROMIUM_ENV}); .ci/run installs it")
    return found


def start_playwright() -> Playwright:
    """Playwright's sync driver; pytest.skip when the package is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed ({exc}): pip install -e '.[test]'")
    return sync_playwright().start()


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, on a fresh temporary profile."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=list(CHROMIUM_ARGS), timeout=60_000)


def artifacts_dir() -> Path:
    """Where screenshots go ($COLLECTOR_ARTIFACTS, default build/artifacts/screenshots)."""
    path = Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the guard on every page ------------------------------------------------------------------

@dataclass
class PageGuard:
    """What a page did: console errors and warnings, uncaught exceptions, failed and
    foreign requests, every URL asked for, and every /v1/ request's headers.

    :meth:`check` (at the test's teardown) fails on any console error, page error or
    request to an origin other than the daemon's. Requests to other origins are aborted
    by a route before they leave the browser, and recorded.
    """

    origin: str
    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    api_requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    allowed_console: list[re.Pattern[str]] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("requestfailed", self._on_failed)
        page.on("request", self._on_request)
        page.route("**/*", self._route)

    def allow_console(self, pattern: str) -> None:
        """Let console errors matching ``pattern`` pass (e.g. Chromium's own line for a
        401 or 404 answer the test asks for)."""
        self.allowed_console.append(re.compile(pattern))

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            loc = msg.location
            where = f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc else ""
            self.console.append((msg.type, msg.text + where))

    def _on_failed(self, request: Request) -> None:
        self.failed.append((request.url, request.failure or "?"))

    def _on_request(self, request: Request) -> None:
        self.urls.append(request.url)
        if urlsplit(request.url).path.startswith("/v1/"):
            self.api_requests.append((request.method, request.url, request.headers))

    def _route(self, route: Route) -> None:
        url = route.request.url
        if _origin(url) == self.origin:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("blockedbyclient")

    def problems(self) -> list[str]:
        """Everything :meth:`check` fails on, one line each."""
        out = [f"request to another origin: {url}" for url in self.foreign]
        out += [f"page error: {text}" for text in self.page_errors]
        out += [f"console error: {text}" for kind, text in self.console
                if kind == "error" and not any(p.search(text) for p in self.allowed_console)]
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            extra = [f"(console {k}: {t})" for k, t in self.console if k == "warning"]
            extra += [f"(failed request: {u} {why})" for u, why in self.failed]
            raise AssertionError("the page misbehaved:\n" + "\n".join(problems + extra))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ws", "wss"):
        return f"{parts.scheme}://{parts.netloc}"
    return parts.scheme + ":"  # about:, data:, blob: stay in the page


def wait_ready(page: Page, *, timeout: float = WAIT_MS) -> None:
    """Wait until ``body[data-state]`` is ready or error; fail unless ready."""
    page.wait_for_function("() => ['ready', 'error'].includes(document.body?.dataset.state)",
                           timeout=timeout)
    state = page.evaluate("document.body.dataset.state")
    if state != "ready":
        error = page.locator("[data-testid=error]")
        text = error.inner_text() if error.count() else "(no [data-testid=error])"
        raise AssertionError(f"{page.url}: data-state {state!r}: {text}")


def screenshots(page: Page, name: str) -> None:
    """A full-page 1280x800 desktop shot and a 390x844 phone shot of the page as it is."""
    out = artifacts_dir()
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(out / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)  # let the charts follow the new width before the shot
    page.screenshot(path=str(out / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


#: In the page: is this canvas drawn on (more than one colour among its pixels)?
CANVAS_COLOURS_JS = """(canvas) => {
    const ctx = canvas.getContext('2d');
    if (!ctx || !canvas.width || !canvas.height) return 0;
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 64; i += 4) {
        seen.add((data[i] << 24 | data[i + 1] << 16 | data[i + 2] << 8 | data[i + 3]) >>> 0);
    }
    return seen.size;
}"""


# -- plain polling, for the sync tests --------------------------------------------------------

def poll(predicate: Callable[[], bool], *, timeout: float, what: str,
         every: float = 0.05, page: Page | None = None) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` s (never a timing assertion:
    only a bound on a wait). Give ``page`` when the predicate reads what the page's event
    handlers record: Playwright's sync API runs them only while it is called, so the wait
    between polls is then the page's own (``wait_for_timeout``), not time.sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if page is not None:
            page.wait_for_timeout(every * 1000)
        else:
            time.sleep(every)


def get_json(url: str, *, token: str | None = None, method: str = "GET",
             body: Any = None) -> Any:
    """One JSON request to the daemon (urllib: no event loop in the browser tests)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def post_events(base: str, events: Sequence[dict[str, Any]], *,
                token: str | None = None) -> None:
    """POST events to the daemon in one request (202 expected)."""
    result = get_json(f"{base}/v1/events", token=token, method="POST", body=list(events))
    assert result["accepted"] == len(events), result


def wait_applied(base: str, *, token: str | None = None, matches: int = 0,
                 timeout: float = 60.0) -> None:
    """Until the worker has taken every job, and /v1/matches lists ``matches`` or more."""
    def done() -> bool:
        queue = get_json(f"{base}/v1/queue", token=token)
        if queue["pending"] or queue.get("in_flight"):
            return False
        listed = get_json(f"{base}/v1/matches?limit=100", token=token)["matches"]
        return len(listed) >= matches
    poll(done, timeout=timeout, what=f"the worker to apply everything at {base}", every=0.1)


def replay(base: str, path: Path, *, token: str | None = None, fast: bool = True,
           rate: float | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
    """``collector replay PATH --to BASE`` in a subprocess (waited for unless ``wait`` is
    False: then the caller owns the process)."""
    args = [sys.executable, "-m", "collector", "replay", str(path), "--to", base,
            "--give-up-after", "20"]
    if fast:
        args.append("--fast")
    if rate is not None:
        args += ["--rate", str(rate)]
    if token:
        args += ["--token", token]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if wait:
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"replay of {path} exited {proc.returncode}: {out!r}"
    return proc


def start_daemon(data_dir: Path, *, args: Sequence[str] = ("--handler", "stats"),
                 env: dict[str, str] | None = None) -> ServerProcess:
    """A real `collector serve` on a free port, ready."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(data_dir, args=list(args), env=env)
    server.start(timeout=30)
    return server


# -- a handler for dead letters ---------------------------------------------------------------

#: While the file this names exists, :func:`refuse_marked` dead-letters marked events.
REFUSE_ENV = "BROWSER_REFUSE_FILE"


async def refuse_marked(job: Job) -> None:
    """Dead-letters events marked ``"refuse": true`` while $BROWSER_REFUSE_FILE exists
    (a test removes the file to let a retried dead letter through)."""
    flag = os.environ.get(REFUSE_ENV)
    if job.payload.get("refuse") and flag and os.path.exists(flag):
        raise PermanentError(f"refused event {job.payload.get('n')} (the test asks so)")


# -- known matches ----------------------------------------------------------------------------

ADA = Player("Ada", "Steam|76561190000000101|0", team=0, shortcut=1)
BRICK = Player("Brick", "Epic|b0000000000000000000000000000102|0", team=1, shortcut=2)
CLEO = Player("Cleo", "Steam|76561190000000103|0", team=0, shortcut=3)
DOT = Player("Dot", "Steam|76561190000000104|0", team=0, shortcut=4)
EVE = Player("Eve", "Epic|e0000000000000000000000000000105|0", team=1, shortcut=5)
FINN = Player("Finn", "Steam|76561190000000106|0", team=1, shortcut=6)
# The same people on the other side, for a duel where Brick plays blue.
BRICK_BLUE = Player("Brick", BRICK.primary_id, team=0, shortcut=2)
ADA_ORANGE = Player("Ada", ADA.primary_id, team=1, shortcut=1)


@dataclass(frozen=True)
class Planned:
    """A synthetic match: its GUID, its messages and what the API must say of it."""

    guid: str
    messages: list[dict[str, Any]]
    players: tuple[str, ...]
    goals: int
    winner: int
    demos: int


def _goal(stream: Stream, scorer: Player, assister: Player | None = None,
          speed: float = 97.5) -> None:
    data: dict[str, Any] = {
        "GoalSpeed": speed, "GoalTime": 20.0,
        "ImpactLocation": {"X": 0.0, "Y": 5120.0, "Z": 100.0},
        "Scorer": {"Name": scorer.name, "Shortcut": scorer.shortcut, "TeamNum": scorer.team},
        "BallLastTouch": {"Player": scorer.name, "Speed": 80.0},
    }
    if assister is not None:
        data["Assister"] = {"Name": assister.name, "Shortcut": assister.shortcut,
                            "TeamNum": assister.team}
    stream.event("GoalScored", data)


def with_scoreboard(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every UpdateState's scoreboard and team scores following the
    goals, assists and demolitions that came before it (the Stream writes zeros)."""
    lines: dict[str, dict[str, int]] = {}
    teams = [0, 0]

    def line(name: str) -> dict[str, int]:
        return lines.setdefault(name, {"Score": 0, "Goals": 0, "Shots": 0, "Assists": 0,
                                       "Saves": 0, "Touches": 0, "Demos": 0})

    out = []
    for message in messages:
        data = json.loads(message["Data"])
        if message["Event"] == "GoalScored":
            scorer = data["Scorer"]
            teams[scorer["TeamNum"]] += 1
            mine = line(scorer["Name"])
            mine["Goals"] += 1
            mine["Shots"] += 1
            mine["Score"] += 100
            mine["Touches"] += 3
            if "Assister" in data:
                helper = line(data["Assister"]["Name"])
                helper["Assists"] += 1
                helper["Score"] += 50
                helper["Touches"] += 2
        elif message["Event"] == "StatfeedEvent" and data.get("EventName") == "Demolish":
            attacker = line(data["MainTarget"]["Name"])
            attacker["Demos"] += 1
            attacker["Score"] += 25
        elif message["Event"] == "StatfeedEvent" and data.get("EventName") == "Save":
            saver = line(data["MainTarget"]["Name"])
            saver["Saves"] += 1
            saver["Score"] += 50
        elif message["Event"] == "UpdateState":
            for player in data["Players"]:
                player.update(line(player["Name"]))
            for team in data["Game"]["Teams"]:
                team["Score"] = teams[team["TeamNum"]]
            message = {"Event": "UpdateState", "Data": json.dumps(data)}
        out.append(message)
    return out


def _save(stream: Stream, saver: Player) -> None:
    stream.event("StatfeedEvent", {
        "EventName": "Save", "Type": "Save",
        "MainTarget": {"Name": saver.name, "Shortcut": saver.shortcut, "TeamNum": saver.team},
    })


def _start(stream: Stream, players: Sequence[Player]) -> None:
    stream.event("MatchCreated")
    stream.event("MatchInitialized")
    stream.event("CountdownBegin")
    stream.still(1.0, {p: Car(boost=33) for p in players})
    stream.event("RoundStarted")


def duel(guid: str, blue: Player, orange: Player, scorers: Sequence[Player],
         *, rate: int = 10, seed: int = 0) -> Planned:
    """A 1v1: live play with the cars' boost and speed moving, then the goals in order."""
    stream = Stream(rate, [blue, orange], guid=guid)
    _start(stream, [blue, orange])
    for n, scorer in enumerate(scorers):
        stream.play(2.0, {blue: Car((80 - 10 * seed, 20 + 5 * n), 1200 + 100 * seed,
                                    boosting=True),
                          orange: Car((40 + 5 * seed, 90), 900 + 150 * n)},
                    ball=[(1.0, 0), (1.0, 1)])
        _goal(stream, scorer, speed=80.0 + 7 * n + seed)
        stream.play(1.0, {blue: Car(33, 600 + 50 * seed), orange: Car(33, 1800)},
                    ball=1 if seed % 2 else 0)
    loser = orange if sum(s.team == 0 for s in scorers) * 2 > len(scorers) else blue
    _save(stream, loser)
    stream.play(2.0, {blue: Car(50, 2300), orange: Car(10, 500, ground=False)}, ball=0)
    blue_goals = sum(s.team == 0 for s in scorers)
    winner = 0 if blue_goals * 2 > len(scorers) else 1
    stream.event("MatchEnded", {"WinnerTeamNum": winner})
    stream.event("MatchDestroyed")
    return Planned(guid, with_scoreboard(stream.messages), (blue.name, orange.name),
                   len(scorers), winner, 0)


def three_v_three(guid: str, *, rate: int = 10) -> Planned:
    """A 3v3 with two demolitions and two assisted goals; blue wins 2-1."""
    blue, orange = (ADA, CLEO, DOT), (BRICK, EVE, FINN)
    players = [*blue, *orange]
    stream = Stream(rate, players, guid=guid)
    _start(stream, players)

    def cars(k: int) -> dict[Player, Car]:
        return {p: Car(((20 + 13 * i + k * 7) % 100, (60 + 11 * i) % 100),
                       700 + 150 * i + 100 * k, boosting=i % 2 == 0)
                for i, p in enumerate(players)}

    stream.play(2.0, cars(0), ball=[(1.2, 0), (0.8, 1)])
    stream.demolish(FINN, CLEO)
    stream.play(1.0, cars(1), ball=1)
    _goal(stream, CLEO, ADA, speed=101.5)
    stream.play(2.0, cars(2), ball=[(0.6, 1), (1.4, 0)])
    _goal(stream, EVE, None, speed=64.0)
    stream.play(1.0, cars(3), ball=1)
    stream.demolish(ADA, EVE)
    _save(stream, DOT)
    stream.play(2.0, cars(4), ball=0)
    _goal(stream, ADA, DOT, speed=118.0)
    stream.play(1.0, cars(5), ball=0)
    stream.event("MatchEnded", {"WinnerTeamNum": 0})
    stream.event("MatchDestroyed")
    return Planned(guid, with_scoreboard(stream.messages), tuple(p.name for p in players),
                   3, 0, 2)


def league() -> list[Planned]:
    """Ada and Brick's evening, in the order it is played: three duels, a 3v3, one more
    duel. Ada: W L W W W; Brick: L W L L L."""
    return [
        duel("D0E10000000000000000000000000001", ADA, BRICK, [ADA, BRICK, ADA], seed=0),
        duel("D0E10000000000000000000000000002", BRICK_BLUE, ADA_ORANGE, [BRICK_BLUE],
             seed=1),
        duel("D0E10000000000000000000000000003", ADA, BRICK, [ADA], seed=2),
        three_v_three("D0E13333000000000000000000000004"),
        duel("D0E10000000000000000000000000005", ADA, BRICK, [ADA, ADA, BRICK, ADA], seed=3),
    ]


def live_match(guid: str = "11FE0000000000000000000000000001", *, rate: int = 10,
               seconds: int = 12) -> list[dict[str, Any]]:
    """A match for the live page: boost ramps and changing speeds every second, the
    clock running, a goal in the middle, no end (it stays live)."""
    stream = Stream(rate, [ADA, BRICK], guid=guid)
    _start(stream, [ADA, BRICK])
    for n in range(seconds):
        stream.play(1.0, {ADA: Car((90 - 7 * n, 80 - 7 * n), 800 + 120 * n, boosting=True),
                          BRICK: Car((10 + 6 * n, 15 + 6 * n), 1900 - 90 * n)},
                    ball=n % 2)
        if n == seconds // 2:
            _goal(stream, BRICK, speed=88.0)
    return with_scoreboard(stream.messages)


def write_jsonl(path: Path, messages: Sequence[dict[str, Any]]) -> Path:
    """A recording as JSON lines (what `collector replay` reads besides raw streams)."""
    path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    return path


def temp_dir(prefix: str) -> Path:
    """A fresh directory (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def is_up(base: str) -> bool:
    """Does the daemon answer /healthz?"""
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


# -- reading the page -------------------------------------------------------------------------

def row_ids(page: Page, container: str, attribute: str) -> list[str]:
    """The ``attribute`` of every ``tr[attribute]`` inside ``[data-testid=container]``."""
    ids: list[str] = page.eval_on_selector_all(
        f"[data-testid={container}] tr[{attribute}]",
        f"rows => rows.map(r => r.getAttribute('{attribute}'))")
    return ids


def wait_chart(page: Page, name: str) -> None:
    """Wait until ``canvas[data-chart=name]`` says it is drawn."""
    page.wait_for_selector(f"canvas[data-chart='{name}'][data-drawn='1']", state="attached",
                           timeout=WAIT_MS)


def canvas_colours(page: Page, name: str) -> int:
    """How many colours the chart's pixels hold (1: blank), at most 64."""
    count: int = page.eval_on_selector(f"canvas[data-chart='{name}']", CANVAS_COLOURS_JS)
    return count


def canvas_digest(page: Page, name: str) -> str:
    """A digest of the chart's pixels, to tell one drawing from another."""
    digest: str = page.eval_on_selector(f"canvas[data-chart='{name}']", """(canvas) => {
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let h1 = 0x811c9dc5, h2 = 0;
        for (let i = 0; i < data.length; i++) {
            h1 = Math.imul(h1 ^ data[i], 16777619) >>> 0;
            h2 = (h2 + data[i] * (i % 251 + 1)) >>> 0;
        }
        return `${canvas.width}x${canvas.height}:${h1.toString(16)}:${h2.toString(16)}`;
    }""")
    return digest


def numbers(text: str) -> list[float]:
    """The numbers in a text (thousands separators and units ignored)."""
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]
