"""`collector matches` and `collector players`: the statistics as readable tables.

By default they read stats.db in the data dir (``--data-dir``, else the config's) in
read-only mode, which works while the daemon runs. With ``--url`` they ask a running
daemon's query API instead (the token comes from ``--token`` or the config).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from collector.config import Settings, load_settings
from collector.logs import configure_logging
from collector.stats import StatsStore, parse_players_cursor

EXIT_NOT_FOUND = 1
_MAX_LIMIT = 100


class QueryError(Exception):
    """The daemon answered with an error, or the thing asked for does not exist."""


def register(subparsers: Any) -> None:
    """Add the `matches` and `players` sub-commands."""
    for name, what, func in (
        ("matches", "list matches, newest first, or show one (ID or guid)", _cmd_matches),
        ("players", "list players with career totals, or show one (ID)", _cmd_players),
    ):
        parser = subparsers.add_parser(name, help=what, description=what + ". " + (
            "Reads stats.db in the data dir (read-only; fine while the daemon runs), "
            "or asks a running daemon with --url."))
        parser.add_argument("id", nargs="?", help="show this one in detail")
        parser.add_argument("--config", type=Path, metavar="FILE",
                            help="TOML config file (for the data dir and the token)")
        parser.add_argument("--data-dir", type=Path, metavar="DIR",
                            help="data dir holding stats.db (default: as `serve` would use)")
        parser.add_argument("--url", metavar="URL",
                            help="query a running daemon, e.g. http://127.0.0.1:8765")
        parser.add_argument("--token", help="bearer token for --url (default: the configured)")
        parser.add_argument("--limit", type=_limit, default=20,
                            help=f"rows per page, 1 to {_MAX_LIMIT} (default 20)")
        parser.add_argument("--before", metavar="CURSOR",
                            help="the next page: the cursor the previous page printed")
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        parser.set_defaults(func=func)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"not a number from 1 to {_MAX_LIMIT}: {text!r}")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["server.data_dir"] = args.data_dir
    return load_settings(args.config, overrides=overrides)


def _cmd_matches(args: argparse.Namespace) -> int:
    if args.id is None:
        return _show(args, "/v1/matches", _local_matches, _render_matches)
    return _show(args, f"/v1/matches/{quote(args.id, safe='')}", _local_match, _render_match)


def _cmd_players(args: argparse.Namespace) -> int:
    if args.id is None:
        return _show(args, "/v1/players", _local_players, _render_players)
    return _show(args, f"/v1/players/{quote(args.id, safe='')}", _local_player, _render_player)


Local = Callable[[StatsStore, argparse.Namespace], Awaitable[dict[str, Any]]]


def _show(args: argparse.Namespace, path: str, local: Local,
          render: Callable[[dict[str, Any]], list[str]]) -> int:
    settings = _settings(args)
    configure_logging("warning", "console", stream=sys.stderr)  # tables alone on stdout
    try:
        if args.url:
            data = asyncio.run(_remote(args, settings, path))
        else:
            data = asyncio.run(_local(args, settings, local))
    except QueryError as exc:
        sys.stderr.write(f"collector: error: {exc}\n")
        return EXIT_NOT_FOUND
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write("\n".join(render(data)) + "\n")
    return 0


async def _local(args: argparse.Namespace, settings: Settings, local: Local
                 ) -> dict[str, Any]:
    store = StatsStore(settings.server.data_dir, readonly=True)
    await store.open()
    try:
        return await local(store, args)
    finally:
        await store.close()


async def _remote(args: argparse.Namespace, settings: Settings, path: str) -> dict[str, Any]:
    token = args.token or settings.token_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params: dict[str, str] = {}
    if args.id is None:
        params["limit"] = str(args.limit)
        if args.before:
            params["before"] = args.before
    url = args.url.rstrip("/") + path
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
                session.get(url, params=params, headers=headers) as resp:
            body = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise QueryError(f"GET {url}: {exc}") from None
    if status != 200:
        detail = body.get("detail", "") if isinstance(body, dict) else ""
        code = body.get("error", "") if isinstance(body, dict) else ""
        raise QueryError(f"GET {url}: HTTP {status} {code}: {detail}".rstrip(": "))
    if not isinstance(body, dict):
        raise QueryError(f"GET {url}: not a JSON object")
    return body


async def _local_matches(store: StatsStore, args: argparse.Namespace) -> dict[str, Any]:
    before = None
    if args.before is not None:
        if not args.before.isdigit():
            raise QueryError(f"--before: not a cursor: {args.before!r}")
        before = int(args.before)
    return await store.matches_page(limit=args.limit, before=before)


async def _local_match(store: StatsStore, args: argparse.Namespace) -> dict[str, Any]:
    key: int | str = int(args.id) if args.id.isdigit() else args.id
    match = await store.match(key)
    if match is None:
        raise QueryError(f"no match {args.id!r}")
    return match


async def _local_players(store: StatsStore, args: argparse.Namespace) -> dict[str, Any]:
    before = None
    if args.before is not None:
        before = parse_players_cursor(args.before)
        if before is None:
            raise QueryError(f"--before: not a cursor: {args.before!r}")
    return await store.players_page(limit=args.limit, before=before)


async def _local_player(store: StatsStore, args: argparse.Namespace) -> dict[str, Any]:
    player = await store.player(int(args.id)) if args.id.isdigit() else None
    if player is None:
        raise QueryError(f"no player {args.id!r}")
    return player


# -- rendering -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Rows under headers, columns padded; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows)
               and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _score(match: dict[str, Any]) -> str:
    teams = match.get("teams") or []
    if len(teams) < 2:
        return "-"
    blue, orange = teams[0], teams[1]
    return (f"{blue.get('name') or 'Blue'} {_cell(blue.get('score'))} - "
            f"{_cell(orange.get('score'))} {orange.get('name') or 'Orange'}")


def _winner(match: dict[str, Any]) -> str:
    winner = match.get("winner")
    if winner is None:
        return "-"
    for team in match.get("teams") or []:
        if team.get("num") == winner and team.get("name"):
            return str(team["name"])
    return f"team {winner}"


def _state(match: dict[str, Any]) -> str:
    if match.get("ended_at") is None:
        return "live"
    return str(match.get("end_reason") or "ended")


def _more(page: dict[str, Any]) -> list[str]:
    return [f"(more: --before {page['next']})"] if page.get("next") else []


def _render_matches(page: dict[str, Any]) -> list[str]:
    rows = [(m["id"], _when(m.get("started_at")), m.get("arena"), _score(m), _winner(m),
             "yes" if m.get("overtime") else "", _state(m)) for m in page["matches"]]
    if not rows:
        return ["no matches yet"]
    return table(("ID", "STARTED", "ARENA", "SCORE", "WINNER", "OT", "STATE"),
                 rows) + _more(page)


def _render_match(match: dict[str, Any]) -> list[str]:
    out = [
        f"match {match['id']}  {match['guid']}",
        f"arena {match.get('arena') or '-'}  playlist {match.get('playlist') or '-'}  "
        f"overtime {'yes' if match.get('overtime') else 'no'}",
        f"started {_when(match.get('started_at'))}  ended {_when(match.get('ended_at'))}  "
        f"({_state(match)})",
        f"score {_score(match)}  winner {_winner(match)}",
        "",
    ]
    out += table(
        ("TEAM", "PLAYER", "SCORE", "GOALS", "ASSISTS", "SAVES", "SHOTS", "TOUCHES", "DEMOS"),
        [(p.get("team"), p["name"], p.get("score"), p.get("goals"), p.get("assists"),
          p.get("saves"), p.get("shots"), p.get("touches"), p.get("demos"))
         for p in match.get("players", [])],
    )
    goals = match.get("goals", [])
    if goals:
        out += ["", *table(("SCORER", "TEAM", "ASSIST", "SPEED", "TIME"),
                           [(g["scorer"], g.get("scorer_team"), g.get("assister"),
                             g.get("speed"), g.get("game_time")) for g in goals])]
    return out


def _render_players(page: dict[str, Any]) -> list[str]:
    rows = [(p["id"], p["name"], p["matches"], p.get("wins"), p["goals"], p["assists"],
             p["saves"], p["shots"], p["score"]) for p in page["players"]]
    if not rows:
        return ["no players yet"]
    return table(("ID", "PLAYER", "MATCHES", "WINS", "GOALS", "ASSISTS", "SAVES", "SHOTS",
                  "SCORE"), rows) + _more(page)


def _render_player(player: dict[str, Any]) -> list[str]:
    out = [
        f"player {player['id']}  {player['name']}  ({player.get('primary_id') or 'no id'})",
        f"matches {player['matches']}  wins {player.get('wins')}  goals {player['goals']}  "
        f"assists {player['assists']}  saves {player['saves']}  shots {player['shots']}  "
        f"score {player['score']}",
        "",
    ]
    out += table(
        ("MATCH", "STARTED", "ARENA", "TEAM", "WON", "SCORE", "GOALS", "ASSISTS", "SAVES"),
        [(m["id"], _when(m.get("started_at")), m.get("arena"), m.get("team"), m.get("won"),
          m.get("score"), m.get("goals"), m.get("assists"), m.get("saves"))
         for m in player.get("recent_matches", [])],
    )
    return out
