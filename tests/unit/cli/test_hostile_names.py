"""Names come from strangers: `collector players` and `collector matches` print them
without anything a terminal would act on (escape sequences, bidi overrides, line
breaks), whether they read a running daemon or the data dir."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.cli.output import terminal_safe
from tests.support.server import ServerProcess
from tests.support.stats import GUID, update

#: A name that retitles the window, clears the screen, and reverses what follows it.
HOSTILE = "pwn\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202eexe.txt\nFAKE LINE\x9b1m"
TEAM = "Blue\x1b[5m"


def _post(url: str, event: dict[str, object]) -> None:
    req = urllib.request.Request(f"{url}/v1/events", data=json.dumps(event).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _assert_inert(text: str) -> None:
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in text, repr(char)
    assert "FAKE LINE" not in text.splitlines()[0:1]  # no line of its own
    assert not any(line.startswith("FAKE LINE") for line in text.splitlines())


def test_terminal_safe_keeps_names_readable() -> None:
    assert terminal_safe("Zone Killa 👍 ñ 東京") == "Zone Killa 👍 ñ 東京"
    assert terminal_safe("a\x1b[2Jb\tc\u202ed") == "a\ufffd[2Jb\ufffdc\ufffdd"


@pytest.mark.parametrize("where", ["daemon", "data dir"])
def test_hostile_names_do_not_reach_the_terminal(
        server_process: Callable[..., ServerProcess], data_dir: Path, where: str) -> None:
    server = server_process(args=["--handler", "stats"])
    server.start()
    event = update(GUID, [(HOSTILE, "Steam|1|0", 0, 100, 1), ("Calm", "Steam|2|0", 1, 50, 0)],
                   score=(1, 0))
    event_data = json.loads(str(event["Data"]))
    event_data["Game"]["Teams"][0]["Name"] = TEAM
    event["Data"] = json.dumps(event_data)
    _post(server.url, event)

    def applied() -> bool:
        with urllib.request.urlopen(f"{server.url}/v1/players", timeout=10) as resp:
            return len(json.load(resp)["players"]) == 2

    deadline = time.monotonic() + 30  # a hang guard, not a speed requirement
    while not applied():
        assert time.monotonic() < deadline, "the players were not applied"
        time.sleep(0.05)
    if where == "daemon":
        target = ["--url", server.url]
    else:
        server.terminate()
        target = ["--data-dir", str(data_dir)]
    for command in (["players"], ["players", "1"], ["matches"], ["matches", "1"]):
        result = _run(*command, *target)
        assert result.returncode == 0, result.stderr
        _assert_inert(result.stdout)
        assert "pwn\ufffd]0;owned" in result.stdout or command == ["matches"], command
    # The JSON output keeps the name exactly (escaped by JSON itself): data, not display.
    raw = _run("players", "1", "--json", *target)
    assert json.loads(raw.stdout)["name"] == HOSTILE
