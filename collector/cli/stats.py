"""`collector matches`, `collector players` and `collector sessions`: the statistics as
readable tables, JSON (``--json``) or CSV (``--csv``).

They find the data the way every command does (collector.cli.client): the running
daemon's query API at ``--url`` or the configured address, else stats.db in the data
dir, read-only (which works while the daemon runs). CSV is built here from the same
documents, by the same code as the API's ``?format=csv`` (collector.stats.csvout).
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
from collector.cli.output import cell, out, print_json, table, terminal_safe, when
from collector.config import Settings, mask_dsn
from collector.logs import configure_logging
from collector.stats import csvout
from collector.stats.queries import parse_players_cursor
from collector.stats.sessions import parse_session_id
from collector.stats.store import StatsStore

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
_MAX_LIMIT = 100
_MAX_ID = 2**63 - 1


class QueryError(AdminError):
    """The thing asked for does not exist, or a cursor is malformed."""


def register(subparsers: Any) -> None:
    """Add the `matches`, `players` and `sessions` sub-commands."""
    common = connection_options()
    common.add_argument("--csv", action="store_true",
                        help="print CSV: one row per player line, player or session")
    for name, what, func in (
        ("matches", "list matches, newest first, or show one (ID or guid)", _cmd_matches),
        ("players", "list players with career totals, or show one (ID)", _cmd_players),
        ("sessions", "list player sessions (matches less than [stats] session_gap_minutes "
         "apart), newest first, or show one (ID)", _cmd_sessions),
    ):
        parser = subparsers.add_parser(name, parents=[common], help=what, description=what + (
            ". Asks the running daemon (--url, default the configured address); when none "
            "answers, or with --data-dir, reads stats.db in the data dir (read-only)."))
        parser.add_argument("id", nargs="?", help="show this one in detail")
        parser.add_argument("--limit", type=types.bounded_int(1, _MAX_LIMIT), default=20,
                            help=f"rows per page, 1 to {_MAX_LIMIT} (default 20)")
        parser.add_argument("--before", metavar="CURSOR",
                            help="the next page: the cursor the previous page printed")
        if name == "sessions":
            parser.add_argument("--player", metavar="ID", type=types.bounded_int(0, _MAX_ID),
                                help="only this player's sessions")
        parser.set_defaults(func=func)


def _cmd_matches(args: argparse.Namespace) -> int:
    if args.id is None:
        return _show(args, "/v1/matches", _local_matches, _render_matches, "matches")
    return _show(args, f"/v1/matches/{quote(args.id, safe='')}", _local_match, _render_match,
                 "match")


def _cmd_players(args: argparse.Namespace) -> int:
    if args.id is None:
        return _show(args, "/v1/players", _local_players, _render_players, "players")
    return _show(args, f"/v1/players/{quote(args.id, safe='')}", _local_player, _render_player,
                 "player")


def _cmd_sessions(args: argparse.Namespace) -> int:
    if args.id is None:
        return _show(args, "/v1/sessions", _local_sessions, _render_sessions, "sessions")
    return _show(args, f"/v1/sessions/{quote(args.id, safe='')}", _local_session,
                 _render_session, "session")


_DOCUMENTS = {"match": "/v1/matches", "player": "/v1/players"}
Local = Callable[[StatsStore, argparse.Namespace, Settings], Awaitable[dict[str, Any]]]
#: A full document by kind ("match" or "player") and id, for the CSV of a list.
Fetch = Callable[[str, int], Awaitable[dict[str, Any]]]


def _store(settings: Settings) -> StatsStore:
    """The statistics to read when no daemon answers: stats.db in the data dir, or in
    the PostgreSQL mode the shared database (read only: this process never leads)."""
    dsn = settings.postgres_dsn()
    if dsn is None:
        return StatsStore(settings.server.data_dir, readonly=True)
    from collector.postgres.stats import PostgresStats  # optional: asyncpg

    return StatsStore(settings.server.data_dir, readonly=True,
                      shared=PostgresStats(dsn, mask_dsn(dsn)))


def _show(args: argparse.Namespace, path: str, local: Local,
          render: Callable[[dict[str, Any]], list[str]], kind: str) -> int:
    configure_logging("warning", "console", stream=sys.stderr)  # tables alone on stdout
    if args.json and args.csv:
        sys.stderr.write("collector: error: --json and --csv: choose one\n")
        return EXIT_USAGE
    params: dict[str, str] = {}
    if args.id is None:
        params["limit"] = str(args.limit)
        if args.before:
            params["before"] = args.before
        if getattr(args, "player", None) is not None:
            params["player"] = str(args.player)

    async def remote(admin: HttpAdmin) -> tuple[dict[str, Any], str | None]:
        data = await admin.get_json(path, params)

        async def fetch(what: str, key: int) -> dict[str, Any]:
            return await admin.get_json(f"{_DOCUMENTS[what]}/{key}")

        return data, await _csv_text(kind, data, fetch) if args.csv else None

    async def from_file(settings: Settings, _why: str | None
                        ) -> tuple[dict[str, Any], str | None]:
        store = _store(settings)
        try:  # a damaged file: one line (StatsDamagedError), the thread stopped
            await store.open()
            data = await local(store, args, settings)

            async def fetch(what: str, key: int) -> dict[str, Any]:
                doc = await (store.match(key) if what == "match" else store.player(key))
                if doc is None:
                    raise QueryError(f"no {what} {key}")
                return doc

            return data, await _csv_text(kind, data, fetch) if args.csv else None
        finally:
            await store.close()

    try:
        data, csv_text = asyncio.run(daemon_or_data_dir(args, remote, from_file))
    except AdminError as exc:
        sys.stderr.write(f"collector: error: {exc}\n")
        return EXIT_NOT_FOUND
    if csv_text is not None:
        sys.stdout.write(csv_text)
        if data.get("next"):  # stdout is the CSV alone
            sys.stderr.write(f"(more: --before {data['next']})\n")
    elif args.json:
        print_json(data)
    else:
        # Every name in these lines was chosen by a player: nothing in them may drive
        # the terminal.
        out("\n".join(terminal_safe(line) for line in render(data)))
    return 0


async def _csv_text(kind: str, data: dict[str, Any], fetch: Fetch) -> str:
    """The CSV of a page or a document, as the API's ?format=csv gives it."""
    if kind == "matches":
        return csvout.matches_csv([await fetch("match", m["id"]) for m in data["matches"]])
    if kind == "players":
        return csvout.players_csv([await fetch("player", p["id"]) for p in data["players"]])
    if kind == "sessions":
        return csvout.sessions_csv(data["sessions"])
    return {"match": csvout.matches_csv, "player": csvout.players_csv,
            "session": csvout.sessions_csv}[kind]([data])


def _gap_s(settings: Settings) -> float:
    return settings.stats.session_gap_minutes * 60.0


async def _local_matches(store: StatsStore, args: argparse.Namespace, _settings: Settings
                         ) -> dict[str, Any]:
    before = None
    if args.before is not None:
        if _numeric(args.before) is None:
            raise QueryError(f"--before: not a cursor: {args.before!r}")
        before = int(args.before)
    return await store.matches_page(limit=args.limit, before=before)


async def _local_match(store: StatsStore, args: argparse.Namespace, _settings: Settings
                       ) -> dict[str, Any]:
    numeric = _numeric(args.id)
    key: int | str = args.id if numeric is None else numeric
    match = await store.match(key)
    if match is None:
        raise QueryError(f"no match {args.id!r}")
    return match


async def _local_players(store: StatsStore, args: argparse.Namespace, _settings: Settings
                         ) -> dict[str, Any]:
    before = None
    if args.before is not None:
        before = parse_players_cursor(args.before)
        if before is None:
            raise QueryError(f"--before: not a cursor: {args.before!r}")
    return await store.players_page(limit=args.limit, before=before)


async def _local_player(store: StatsStore, args: argparse.Namespace, _settings: Settings
                        ) -> dict[str, Any]:
    numeric = _numeric(args.id)
    player = None if numeric is None else await store.player(numeric)
    if player is None:
        raise QueryError(f"no player {args.id!r}")
    return player


async def _local_sessions(store: StatsStore, args: argparse.Namespace, settings: Settings
                          ) -> dict[str, Any]:
    before = None
    if args.before is not None:
        before = parse_session_id(args.before)
        if before is None:
            raise QueryError(f"--before: not a cursor: {args.before!r}")
    page = await store.sessions_page(gap_s=_gap_s(settings), limit=args.limit, before=before,
                                     player=args.player)
    if page is None:
        raise QueryError(f"--before: not a cursor: {args.before!r}")
    return page


async def _local_session(store: StatsStore, args: argparse.Namespace, settings: Settings
                         ) -> dict[str, Any]:
    key = parse_session_id(args.id)
    if key is None:
        raise QueryError(f"not a session id (<player id>.<first match id>): {args.id!r}")
    session = await store.session(key, gap_s=_gap_s(settings))
    if session is None:
        raise QueryError(f"no session {args.id!r}")
    return session


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


def _clock(goal: dict[str, Any]) -> str:
    """The game clock at a goal, as the game shows it: 4:59, or +0:31 in overtime."""
    seconds = goal.get("clock")
    if seconds is None:
        return "-"
    text = f"{seconds // 60}:{seconds % 60:02d}"
    return f"+{text}" if goal.get("overtime") else text


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


def _arena(row: dict[str, Any]) -> str:
    """The arena's display name, with the game's code beside it when they differ."""
    code, name = row.get("arena"), row.get("arena_name")
    if not code:
        return "-"
    return f"{name} ({code})" if name and name != code else str(code)


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _possession(match: dict[str, Any]) -> str:
    teams = [t for t in match.get("teams") or [] if t.get("possession_s") is not None]
    return "  ".join(f"{t.get('name') or 'team ' + str(t.get('num'))} "
                     f"{_seconds(t['possession_s'])}" for t in teams) or "-"


def _whole(value: Any) -> int | None:
    return None if value is None else round(value)


def _derived_rows(players: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Boost and movement per player: boost average, collected and used per minute,
    seconds at 0 and at 100 boost, average speed (uu/s), seconds supersonic, on the
    ground, on a wall and in the air, powerslides, demolitions inflicted/taken."""
    rows = []
    for p in players:
        s = p.get("stats") or {}
        demos = (f"{s['demos_inflicted']}/{s['demos_taken']}"
                 if s.get("demos_inflicted") is not None else None)
        rows.append((p["name"], s.get("boost_avg"), _whole(s.get("bpm")), _whole(s.get("bcpm")),
                     s.get("time_zero_boost_s"), s.get("time_full_boost_s"),
                     _whole(s.get("speed_avg")), s.get("time_supersonic_s"),
                     s.get("time_ground_s"), s.get("time_wall_s"), s.get("time_air_s"),
                     s.get("powerslide_count"), demos))
    return rows


_DERIVED_HEADERS = ("PLAYER", "BOOST", "BPM", "BCPM", "AT 0", "AT 100", "SPEED",
                    "SUPERSONIC", "GROUND", "WALL", "AIR", "SLIDES", "DEMOS")


def _render_match(match: dict[str, Any]) -> list[str]:
    out = [
        f"match {match['id']}  {match['guid']}",
        f"arena {_arena(match)}  playlist {match.get('playlist') or '-'}  "
        f"overtime {'yes' if match.get('overtime') else 'no'}",
        f"started {when(match.get('started_at'))}  ended {when(match.get('ended_at'))}  "
        f"({_state(match)})  play {_seconds(match.get('duration_s'))}",
        f"score {_score(match)}  winner {_winner(match)}  possession {_possession(match)}",
        "",
    ]
    players = match.get("players", [])
    out += table(
        ("TEAM", "PLAYER", "SCORE", "GOALS", "ASSISTS", "SAVES", "SHOTS", "TOUCHES", "DEMOS"),
        [(p.get("team"), p["name"], p.get("score"), p.get("goals"), p.get("assists"),
          p.get("saves"), p.get("shots"), p.get("touches"), p.get("demos"))
         for p in players],
    )
    if any((p.get("stats") or {}).get("tracked_s") is not None for p in players):
        # Seconds of live play (AT 0/100 boost, SUPERSONIC, GROUND, WALL, AIR); BOOST is
        # the average boost, BPM/BCPM boost collected/used a minute, SPEED in uu/s.
        out += ["", *table(_DERIVED_HEADERS, _derived_rows(players)),
                "(BOOST average 0-100; BPM/BCPM boost collected/used a minute; AT 0, AT 100, "
                "SUPERSONIC, GROUND, WALL, AIR: seconds of play; SPEED uu/s)"]
    goals = match.get("goals", [])
    if goals:
        out += ["", *table(("CLOCK", "SCORER", "TEAM", "ASSIST", "SPEED", "TIME"),
                           [(_clock(g), g["scorer"], g.get("scorer_team"), g.get("assister"),
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
    ]
    s = player.get("stats") or {}
    if s.get("tracked_s") is not None:
        out.append(
            f"boost avg {cell(s.get('boost_avg'))}  bpm {cell(_whole(s.get('bpm')))}  "
            f"bcpm {cell(_whole(s.get('bcpm')))}  speed {cell(_whole(s.get('speed_avg')))} uu/s  "
            f"supersonic {_seconds(s.get('time_supersonic_s'))}  "
            f"air {_seconds(s.get('time_air_s'))}  "
            f"demos {s.get('demos_inflicted')}/{s.get('demos_taken')}  "
            f"(over {_seconds(s.get('tracked_s'))} of play)")
    out.append("")
    out += table(
        ("MATCH", "STARTED", "ARENA", "TEAM", "WON", "SCORE", "GOALS", "ASSISTS", "SAVES",
         "BOOST", "SPEED"),
        [(m["id"], when(m.get("started_at")), m.get("arena_name") or m.get("arena"),
          m.get("team"), m.get("won"), m.get("score"), m.get("goals"), m.get("assists"),
          m.get("saves"), (m.get("stats") or {}).get("boost_avg"),
          _whole((m.get("stats") or {}).get("speed_avg")))
         for m in player.get("recent_matches", [])],
    )
    return out


def _record(session: dict[str, Any]) -> str:
    """Wins-losses, e.g. 3-1."""
    return f"{session.get('wins', 0)}-{session.get('losses', 0)}"


def _streak(session: dict[str, Any]) -> str:
    streak = session.get("streak")
    return f"{streak['kind']}{streak['length']}" if streak else "-"


def _render_sessions(page: dict[str, Any]) -> list[str]:
    rows = []
    for s in page["sessions"]:
        averages, stats = s.get("averages") or {}, s.get("stats") or {}
        rows.append((s["id"], when(s.get("started_at")), s["player"]["name"], s["matches"],
                     _record(s), _streak(s), averages.get("score"), averages.get("goals"),
                     averages.get("saves"), stats.get("boost_avg"), stats.get("speed_avg")))
    if not rows:
        return ["no sessions yet"]
    return table(("ID", "STARTED", "PLAYER", "MATCHES", "W-L", "STREAK", "SCORE/M",
                  "GOALS/M", "SAVES/M", "BOOST AVG", "SPEED AVG"), rows) + _more(page)


def _render_session(session: dict[str, Any]) -> list[str]:
    averages, stats = session.get("averages") or {}, session.get("stats") or {}
    matches = session.get("matches") or []
    out = [
        f"session {session['id']}  player {session['player']['id']} "
        f"{session['player']['name']}",
        f"started {when(session.get('started_at'))}  ended {when(session.get('ended_at'))}",
        f"matches {len(matches)}  W-L {_record(session)}  streak {_streak(session)}",
        "per match: " + "  ".join(f"{f} {cell(averages.get(f))}"
                                   for f in ("score", "goals", "assists", "saves", "shots")),
        f"boost avg {cell(stats.get('boost_avg'))}  bpm {cell(stats.get('bpm'))}  "
        f"speed avg {cell(stats.get('speed_avg'))}  "
        f"supersonic {cell(stats.get('time_supersonic_s'))} s",
        "",
    ]
    out += table(
        ("MATCH", "STARTED", "ARENA", "TEAM", "WON", "SCORE", "GOALS", "ASSISTS", "SAVES",
         "BOOST AVG", "SPEED AVG"),
        [(m["id"], when(m.get("started_at")), m.get("arena"), m.get("team"), m.get("won"),
          m.get("score"), m.get("goals"), m.get("assists"), m.get("saves"),
          (m.get("stats") or {}).get("boost_avg"), (m.get("stats") or {}).get("speed_avg"))
         for m in matches],
    )
    return out


def _numeric(text: str) -> int | None:
    """An id or cursor as the query API reads it: ASCII digits, within SQLite's range."""
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= 2**63 - 1:
        return int(text)
    return None
