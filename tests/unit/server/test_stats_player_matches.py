"""GET /v1/players/{id}/matches, team colours and cars through the real application: real
HTTP, queue, worker and stats.db in tmp_path."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient

from tests.support.server import ClientFactory, wait_until
from tests.support.stats import api

pytestmark = pytest.mark.both_backends

WAIT_S = 30.0  # a ceiling for "the worker has caught up", never a measured time
TOKEN = "history-token"

Client = TestClient[Any, Any]


def guid(n: int) -> str:
    return f"{n:032X}"


def snapshot(match: int, players: list[tuple[str, int, int]], *,
             colours: tuple[Any, Any] = ("1873FF", "C26418")) -> dict[str, Any]:
    """An UpdateState of match `match`: (name, team, score) players, Blue's car seen."""
    return api("UpdateState", {
        "MatchGuid": guid(match),
        "Players": [{"Name": name, "PrimaryId": f"Steam|{name}|0", "TeamNum": team,
                     "Score": score, "Goals": score // 100,
                     **({"bHasCar": True, "Boost": 45, "Speed": 36.0} if team == 0 else {})}
                    for name, team, score in players],
        "Game": {"Teams": [{"Name": "Blue", "TeamNum": 0, "Score": 1, "ColorPrimary": colours[0],
                            "ColorSecondary": "E5E5E5"},
                           {"Name": "Orange", "TeamNum": 1, "Score": 0,
                            "ColorPrimary": colours[1], "ColorSecondary": "E5E5E5"}],
                 "TimeSeconds": 200, "Arena": "cs_p"},
    })


async def post(client: Client, events: list[dict[str, Any]], **headers: str) -> int:
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    resp = await client.post("/v1/events", data=body,
                             headers={"Content-Type": "application/x-ndjson", **headers})
    assert resp.status == 202, await resp.text()
    return int((await resp.json())["last_seq"])


async def drained(client: Client, last_seq: int, **headers: str) -> None:
    async def done() -> bool:
        resp = await client.get("/v1/queue", headers=headers)
        q = await resp.json()
        return bool(q["last_seq"] >= last_seq and q["pending"] == 0 and q["in_flight"] == 0)
    await wait_until(done, timeout=WAIT_S, what=f"the worker to reach seq {last_seq}")


async def get_json(client: Client, path: str, status: int = 200,
                   headers: dict[str, str] | None = None) -> Any:
    resp = await client.get(path, headers=headers or {})
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def player_id(client: Client, name: str) -> int:
    page = await get_json(client, "/v1/players?limit=100")
    return int(next(p["id"] for p in page["players"] if p["name"] == name))


async def season(client: Client) -> list[int]:
    """13 matches; Ada plays the 9 whose number is not a multiple of 3; each ends. The ids
    of Ada's matches, newest first."""
    events: list[dict[str, Any]] = []
    for n in range(1, 14):
        players = [("Bob", 1, 10 * n)]
        if n % 3:
            players.append(("Ada", 0, 100 * n))
        events.append(snapshot(n, players))
        events.append(api("MatchEnded", {"MatchGuid": guid(n), "WinnerTeamNum": n % 2}))
    await drained(client, await post(client, events))
    page = await get_json(client, "/v1/matches?limit=100")
    by_guid = {m["guid"]: m["id"] for m in page["matches"]}
    return sorted((by_guid[guid(n)] for n in range(1, 14) if n % 3), reverse=True)


@pytest.mark.parametrize("limit", [1, 2, 4, 9, 100])
async def test_pages_walk_all_of_a_players_matches_newest_first_once(
        make_client: ClientFactory, limit: int) -> None:
    client = await make_client(worker__handlers=("stats",))
    expected = await season(client)
    ada = await player_id(client, "Ada")
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        path = f"/v1/players/{ada}/matches?limit={limit}"
        page = await get_json(client, path + ("" if cursor is None else f"&before={cursor}"))
        assert set(page) == {"matches", "next"}
        assert 1 <= len(page["matches"]) <= limit
        seen += [m["id"] for m in page["matches"]]
        pages += 1
        assert pages <= len(expected), "a page too many: the cursor does not move on"
        cursor = page["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert seen == expected  # every match of Ada's, newest first, none twice, no other
    assert pages == -(-len(expected) // limit)


async def test_entries_are_exactly_those_of_recent_matches(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    await season(client)
    ada = await player_id(client, "Ada")
    player = await get_json(client, f"/v1/players/{ada}")
    page = await get_json(client, f"/v1/players/{ada}/matches?limit=100")
    assert page["next"] is None
    assert page["matches"][:len(player["recent_matches"])] == player["recent_matches"]
    assert len(player["recent_matches"]) == 9  # fewer than ten: all of them
    default = await get_json(client, f"/v1/players/{ada}/matches")
    assert default["matches"] == page["matches"]  # the default limit (20) takes all nine
    first = page["matches"][0]
    assert (first["team"], first["score"], first["goals"]) == (0, 1300, 13)
    assert first["won"] is (first["winner"] == 0)
    assert set(first["stats"]) >= {"tracked_s", "boost_avg"}


async def test_the_default_limit_is_twenty(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    events = [snapshot(n, [("Ada", 0, n)]) for n in range(1, 23)]
    await drained(client, await post(client, events))
    ada = await player_id(client, "Ada")
    page = await get_json(client, f"/v1/players/{ada}/matches")
    assert len(page["matches"]) == 20
    rest = await get_json(client, f"/v1/players/{ada}/matches?before={page['next']}")
    assert len(rest["matches"]) == 2
    assert rest["next"] is None


async def test_an_unknown_player_is_404_and_bad_parameters_400(
        make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    await season(client)
    ada = await player_id(client, "Ada")
    for path in ("/v1/players/999/matches", "/v1/players/abc/matches",
                 "/v1/players/99999999999999999999/matches"):
        body = await get_json(client, path, 404)
        assert body["error"] == "not_found"
        assert isinstance(body["detail"], str)
    for query in ("limit=0", "limit=101", "limit=x", "limit=-1", "limit=", "before=abc",
                  "before=-3", "before=1.5", "before=99999999999999999999"):
        body = await get_json(client, f"/v1/players/{ada}/matches?{query}", 400)
        assert body["error"] == "invalid_parameter", query
    # A cursor below every match is an empty last page, not an error.
    assert await get_json(client, f"/v1/players/{ada}/matches?before=1") == \
        {"matches": [], "next": None}


async def test_the_route_wants_the_token(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",), server__token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await drained(client, await post(client, [snapshot(1, [("Ada", 0, 100)])], **auth), **auth)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        body = await get_json(client, "/v1/players/1/matches", 401, headers)
        assert body["error"] == "unauthorized"
    page = await get_json(client, "/v1/players/1/matches", headers=auth)
    assert [m["guid"] for m in page["matches"]] == [guid(1)]


# -- colours and cars in the match documents ---------------------------------------------------


async def test_colours_and_cars_in_the_match_routes(make_client: ClientFactory) -> None:
    client = await make_client(worker__handlers=("stats",))
    hostile = snapshot(1, [("Ada", 0, 100), ("Bob", 1, 50)],
                       colours=("red;background:url(x)", "12345G"))
    await drained(client, await post(client, [hostile]))
    match = await get_json(client, "/v1/matches/1")
    assert [(t["color_primary"], t["color_secondary"]) for t in match["teams"]] == \
        [(None, "#e5e5e5"), (None, "#e5e5e5")]
    await drained(client, await post(client, [snapshot(1, [("Ada", 0, 100), ("Bob", 1, 50)],
                                                       colours=("1873FF", "C26418"))]))
    for teams in ((await get_json(client, "/v1/matches"))["matches"][0]["teams"],
                  (await get_json(client, "/v1/matches/1"))["teams"],
                  (await get_json(client, f"/v1/matches/{guid(1)}"))["teams"]):
        assert [(t["num"], t["color_primary"], t["color_secondary"]) for t in teams] == \
            [(0, "#1873ff", "#e5e5e5"), (1, "#c26418", "#e5e5e5")]
    match = await get_json(client, "/v1/matches/1")
    cars = {p["name"]: p["car"] for p in match["players"]}
    assert cars == {"Ada": {"boost": 45, "speed": 1000.0, "supersonic": False,
                            "boosting": False, "on_ground": False, "on_wall": False,
                            "powersliding": False, "demolished": False},
                    "Bob": None}  # the opponent: not shown, so null (never zeros)
    await drained(client, await post(client, [api("MatchEnded", {"MatchGuid": guid(1),
                                                                 "WinnerTeamNum": 0})]))
    match = await get_json(client, "/v1/matches/1")
    assert {p["name"]: p["car"] for p in match["players"]} == {"Ada": None, "Bob": None}
    assert cast("list[dict[str, Any]]", match["teams"])[0]["color_primary"] == "#1873ff"
