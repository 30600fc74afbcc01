"""CSV: ``?format=csv`` on the lists and ``--csv`` on the commands, one writer
(collector.stats.csvout), formula-looking text neutralised, numbers left numbers."""

from __future__ import annotations

import csv
import io
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from collector.stats.csvout import (
    MATCH_HEADER,
    PLAYER_HEADER,
    SESSION_HEADER,
    rows_to_csv,
    safe_cell,
)
from collector.stats.derived import PLAYER_KEYS
from tests.support.model import run_cli
from tests.support.season import MATCH_S, Game, build, sample_stats, season, set_stats
from tests.support.server import ClientFactory, ServerProcess

pytestmark = pytest.mark.both_backends

HYPERLINK = '=HYPERLINK("http://x")'
EVIL = (HYPERLINK, "Epic|evil|0")
SUM = ("@SUM(1)", "Epic|sum|0")

Client = TestClient[Any, Any]


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def as_dicts(text: str) -> list[dict[str, str]]:
    header, *rows = parse(text)
    return [dict(zip(header, row, strict=True)) for row in rows]


def cell_text(value: Any) -> str:
    """What a number or None looks like in the CSV."""
    return "" if value is None else str(value)


# -- the writer ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    HYPERLINK, "@SUM(1)", "+1", "-1", "=1+1", "\tx", "\r=1", "-", "@",
])
def test_text_that_could_start_a_formula_gets_a_quote(text: str) -> None:
    assert safe_cell(text) == "'" + text
    (row,) = parse(rows_to_csv(["name"], [[text]]))[1:]
    assert row == ["'" + text]


@pytest.mark.parametrize("text", ["Ann", "a=b", " =1", "1-2", "", "Zoë, \"the\"\nqueen"])
def test_other_text_is_left_as_it_is(text: str) -> None:
    assert safe_cell(text) == text
    assert parse(rows_to_csv(["name"], [[text]]))[1] == [text]


def test_numbers_stay_numbers_negative_ones_too() -> None:
    text = rows_to_csv(["a", "b", "c", "d", "e", "f"], [[-3, -2.5, 0, None, True, False]])
    assert text == "a,b,c,d,e,f\r\n-3,-2.5,0,,1,0\r\n"
    assert [safe_cell(v) for v in (-3, -2.5, 1e-7)] == [-3, -2.5, 1e-7]


# -- the routes ------------------------------------------------------------------------------


def hostile_games() -> list[Game]:
    """The season, then a match of two players whose names are formulas."""
    games = season()
    start = games[-1].start + 3 * 3600
    return [*games, Game("g6", start, start + MATCH_S,
                         ((*EVIL, 0, 100, 1), (*SUM, 1, 90, 0)), 0)]


@pytest.fixture
async def client(data_dir: Path, make_client: ClientFactory) -> Client:
    db = await build(data_dir, hostile_games())
    set_stats(db, "g6", EVIL[1], {**sample_stats(2.0), "distance": -12.5})
    set_stats(db, "g6", SUM[1], None)
    return await make_client(worker__handlers=("stats",))


async def get_csv(client: Client, path: str) -> tuple[str, Any]:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/csv"
    assert resp.charset == "utf-8"
    return await resp.text(), resp.headers


async def get_json(client: Client, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_matches_give_one_row_per_player_line(client: Client) -> None:
    text, headers = await get_csv(client, "/v1/matches?format=csv&limit=2")
    page = await get_json(client, "/v1/matches?limit=2")
    assert headers["X-Next-Cursor"] == page["next"]
    assert tuple(parse(text)[0]) == MATCH_HEADER
    rows = as_dicts(text)
    expected = []
    for summary in page["matches"]:
        match = await get_json(client, f"/v1/matches/{summary['id']}")
        for line in match["players"]:
            expected.append((str(match["id"]), match["guid"], line["name"],
                             cell_text(line["team"]), cell_text(line["score"]),
                             [cell_text((line.get("stats") or {}).get(k)) for k in PLAYER_KEYS]))
    assert [(r["match_id"], r["guid"], r["player"].removeprefix("'"), r["team"], r["score"],
             [r[k] for k in PLAYER_KEYS]) for r in rows] == expected
    by_name = {r["player"]: r for r in rows}
    # The formulas are text; the numbers beside them are numbers.
    assert set(by_name) >= {"'" + HYPERLINK, "'@SUM(1)"}
    evil = by_name["'" + HYPERLINK]
    assert (evil["won"], evil["goals"], evil["started_utc"][:2]) == ("1", "1", "20")
    assert evil["distance"] == "-12.5"  # the line's statistics, from its document
    assert ",-12.5," in text  # unquoted: a number

    # The next page, through the cursor, in CSV too.
    more, headers = await get_csv(client, f"/v1/matches?format=csv&before={page['next']}")
    assert "X-Next-Cursor" not in headers
    assert {r["guid"] for r in as_dicts(more)} == {"g1", "g2", "g3", "g4"}


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_players_give_one_row_each(client: Client) -> None:
    text, headers = await get_csv(client, "/v1/players?format=csv&limit=100")
    assert "X-Next-Cursor" not in headers
    assert tuple(parse(text)[0]) == PLAYER_HEADER
    page = await get_json(client, "/v1/players?limit=100")
    rows = as_dicts(text)
    assert [r["player_id"] for r in rows] == [str(p["id"]) for p in page["players"]]
    for row, summary in zip(rows, page["players"], strict=True):
        doc = await get_json(client, f"/v1/players/{summary['id']}")
        assert [row[k] for k in ("matches", "wins", "score", "goals")] == \
            [cell_text(doc[k]) for k in ("matches", "wins", "score", "goals")]
        assert [row[k] for k in PLAYER_KEYS] == \
            [cell_text((doc.get("stats") or {}).get(k)) for k in PLAYER_KEYS]
    assert {r["player"] for r in rows} == {"Ann", "Bob", "Cid", "'" + HYPERLINK, "'@SUM(1)"}


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_sessions_give_one_row_per_player_session(client: Client) -> None:
    text, headers = await get_csv(client, "/v1/sessions?format=csv&limit=3")
    page = await get_json(client, "/v1/sessions?limit=3")
    assert headers["X-Next-Cursor"] == page["next"]
    assert tuple(parse(text)[0]) == SESSION_HEADER
    rows = as_dicts(text)
    assert [r["session_id"] for r in rows] == [s["id"] for s in page["sessions"]]
    evil = rows[0] if rows[0]["player"] == "'" + HYPERLINK else rows[1]
    assert (evil["matches"], evil["wins"], evil["losses"], evil["streak"]) == \
        ("1", "1", "0", "W1")
    assert evil["distance"] == "-12.5"
    assert evil["tracked_s"] == "120.0"
    ann = as_dicts((await get_csv(client, "/v1/sessions?format=csv&player=1"))[0])
    assert [(r["session_id"], r["matches"], r["wins"], r["losses"], r["streak"], r["score"])
            for r in ann] == [("1.3", "3", "2", "0", "W2", "770"),
                              ("1.1", "2", "1", "1", "L1", "400")]


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_csv_requests_are_checked_like_json_ones(client: Client) -> None:
    for path in ("/v1/matches?format=csv&limit=0", "/v1/players?format=csv&before=x",
                 "/v1/sessions?format=csv&player=x", "/v1/matches?format=html"):
        resp = await client.get(path)
        assert resp.status == 400, path
        assert (await resp.json())["error"] == "invalid_parameter"


# -- the commands ------------------------------------------------------------------------------


def cli_csv(*args: str, cwd: Path) -> str:
    result = run_cli(*args, "--csv", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        return str(resp.read().decode()).replace("\r\n", "\n")


@pytest.mark.sqlite_only  # stats.db itself, or a command line on it
async def test_the_commands_print_the_apis_csv(tmp_path: Path, data_dir: Path,
                                               server_process: Any) -> None:
    db = await build(data_dir, hostile_games())
    set_stats(db, "g6", EVIL[1], {**sample_stats(2.0), "distance": -12.5})
    where = ("--data-dir", str(data_dir))
    local = {name: cli_csv(name, *where, cwd=tmp_path) for name in
             ("matches", "players", "sessions")}
    server: ServerProcess = server_process(args=["--handler", "stats"])
    server.start()
    for name, text in local.items():
        assert text == fetch(f"{server.url}/v1/{name}?format=csv"), name
        assert cli_csv(name, "--url", server.url, cwd=tmp_path) == text, name
    assert "'" + HYPERLINK.replace('"', '""') in local["players"]
    # One document: the rows of that match, player, session.
    (row,) = as_dicts(cli_csv("sessions", "1.3", "--url", server.url, cwd=tmp_path))
    assert (row["session_id"], row["matches"], row["streak"]) == ("1.3", "3", "W2")
    rows = as_dicts(cli_csv("matches", "6", *where, cwd=tmp_path))
    assert [r["player"] for r in rows] == ["'" + HYPERLINK, "'@SUM(1)"]
    result = run_cli("sessions", "--limit", "1", "--csv", *where, cwd=tmp_path)
    assert result.stderr == "(more: --before 5.6)\n"  # stdout: the CSV alone
    assert len(parse(result.stdout)) == 2
    result = run_cli("matches", "--csv", "--json", *where, cwd=tmp_path)
    assert result.returncode == 2
    assert "choose one" in result.stderr
