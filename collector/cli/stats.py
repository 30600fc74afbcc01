"""`collector matches` and `collector players`: the statistics as readable tables.

They find the data the way every command does (collector.cli.client): the running
daemon's query API at ``--url`` or the configured address, else stats.db in the data
dir, read-only (which works while the daemon runs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from collector.cli import args as types
from collector.cli.client import (
    AdminError,
    HttpAdmin,
    connection_options,
    daemon_or_data_dir,
)
from collector.cli.output import cell, out, print_json, table, when
from collector.config import Settings
from collector.logs import configure_logging
from collector.stats.queries import parse_players_cursor
from collector.stats.store import StatsStore

EXIT_NOT_FOUND = 1
_MAX_LIMIT = 100


class QueryError(AdminError):
    """The thing asked for does not exist, or a cursor is malformed."""


def register(subparsers: Any) -> None:
    """Add the `matches` and `players` sub-commands."""
    common = connection_options()
    for name, what, func in (
        ("matches", "list matches, newest first, or show one (ID or guid)", _cmd_matches),
        ("players", "list players with career totals, or show one (ID)", _cmd_players),
    ):
        parser = subparsers.add_parser(name, parents=[common], help=what, description=what + (
            ". Asks the running daemon (--url, default the configured address); when none "
            "answers, or with --data-dir, reads stats.db in the data dir (read-only)."))
        parser.add_argument("id", nargs="?", help="show this one in detail")
        parser.add_argument("--limit", type=types.bounded_int(1, _MAX_LIMIT), default=20,
                            help=f"rows per page, 1 to {_MAX_LIMIT} (default 20)")
        parser.add_argument("--before", metavar="CURSOR",
                            help="the next page: the cursor the previous page printed")
        parser.set_defaults(func=func)


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
    configure_logging("warning", "console", stream=sys.stderr)  # tables alone on stdout
    params: dict[str, str] = {}
    if args.id is None:
        params["limit"] = str(args.limit)
        if args.before:
            params["before"] = args.before

    async def remote(admin: HttpAdmin) -> dict[str, Any]:
        return await admin.get_json(path, params)

    async def from_file(settings: Settings, _why: str | None) -> dict[str, Any]:
        store = StatsStore(settings.server.data_dir, readonly=True)
        try:  # a damaged file: one line (StatsDamagedError), the thread stopped
            await store.open()
            return await local(store, args)
        finally:
            await store.close()

    try:
        data = asyncio.run(daemon_or_data_dir(args, remote, from_file))
    except AdminError as exc:
        sys.stderr.write(f"collector: error: {exc}\n")
        return EXIT_NOT_FOUND
    if args.json:
        print_json(data)
    else:
        out("\n".join(render(data)))
    return 0


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


def _score(match: dict[str, Any]) -> str:
    teams = match.get("teams") or []
    if len(teams) < 2:
        return "-"
    blue, orange = teams[0], teams[1]
    return (f"{blue.get('name') or 'Blue'} {cell(blue.get('score'))} - "
            f"{cell(orange.get('score'))} {orange.get('name') or 'Orange'}")


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
    rows = [(m["id"], when(m.get("started_at")), m.get("arena"), _score(m), _winner(m),
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
        f"started {when(match.get('started_at'))}  ended {when(match.get('ended_at'))}  "
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
        [(m["id"], when(m.get("started_at")), m.get("arena"), m.get("team"), m.get("won"),
          m.get("score"), m.get("goals"), m.get("assists"), m.get("saves"))
         for m in player.get("recent_matches", [])],
    )
    return out
