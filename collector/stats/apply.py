"""Applying one job to stats.db, inside the transaction the store opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from collector.jobs import Job
from collector.stats import formats
from collector.stats.backend import Connection
from collector.stats.schema import LINE_FIELDS

log = structlog.get_logger(__name__)

Outcome = Literal["applied", "unchanged", "replayed", "stale", "ignored"]


@dataclass(slots=True)
class _Match:
    id: int
    guid: str
    offline: bool
    ended: bool
    opened_pos: int | None
    last_snapshot_ts: int | None


@dataclass(slots=True)
class _Feed:
    name: str
    current: int | None  # the match this feed plays now
    high_sequence: int | None  # the highest X-Sequence applied


def feed_row(conn: Connection, memo: dict[tuple[Any, ...], tuple[Any, ...]],
             name: str) -> tuple[Any, ...]:
    """A feed's (current match, X-Sequence mark), (None, None) for a feed not seen yet:
    as `memo` (the transaction's) has it, else read and remembered there."""
    key = ("feed", name)
    row = memo.get(key)
    if row is None:
        found = conn.execute(
            "SELECT current_match, high_sequence FROM feeds WHERE feed = ?", (name,)
        ).fetchone()
        row = memo[key] = (None, None) if found is None else (found[0], found[1])
    return row


class Apply:
    """One job's changes, inside the transaction the caller opened."""

    def __init__(self, conn: Connection, job: Job, *, revisit: bool = False,
                 memo: dict[tuple[Any, ...], tuple[Any, ...]] | None = None) -> None:
        self.conn = conn
        self.job = job
        #: Rows of `players` (by key), `match_players` (by match and player), `feeds` (by
        #: name) and the written part of `match_teams` as this transaction last read or
        #: wrote them: the caller's, shared by the jobs of one transaction (nothing else
        #: writes them meanwhile), emptied when a job's savepoint is rolled back. A
        #: snapshot stores every player's line and both teams; at a few changed
        #: scoreboards a second per feed, these reads and unchanged writes were most
        #: statements (each a round trip on PostgreSQL).
        self.memo: dict[tuple[Any, ...], tuple[Any, ...]] = {} if memo is None else memo
        self.feed = self._feed(job.source or "")
        #: The job's place in its feed's own numbering.
        self.position = job.sequence if job.sequence is not None else job.seq
        # Queue order needs no mark of its own: the worker runs jobs in seq order, and a
        # job at or below last_seq comes here as a revisit.
        high = self.feed.high_sequence
        self.late = revisit or (
            job.sequence is not None and high is not None and job.sequence <= high
        )
        self.revisit = revisit
        self.changed = False
        #: The match the event was applied to (None: it named none, or was skipped).
        self.match_id: int | None = None
        #: Matches this job ended (end, close, superseded), for the derived statistics.
        self.ended: list[int] = []

    def run(self, event: formats.Event) -> Outcome:
        if isinstance(event, formats.Ignored):
            self._count("bogus_goals")
            return "ignored"
        if self.late and not self._late_allowed(event):
            self._count("stale_skipped")
            return "stale"
        if isinstance(event, formats.Snapshot):
            outcome = self._snapshot(event)
            if outcome == "stale":
                return outcome
        elif isinstance(event, formats.Goal):
            self._goal(event)
        elif isinstance(event, formats.MatchStarted):
            self._started(event)
        elif isinstance(event, formats.MatchEnded):
            self._ended(event)
        elif isinstance(event, formats.MatchClosed):
            self._closed(event)
        if not self.late:
            self._advance_mark()
        self._save_feed()
        return "applied" if self.changed else "unchanged"

    def _late_allowed(self, event: formats.Event) -> bool:
        """Facts about a named match may come late; snapshots and unnamed events may not."""
        if isinstance(event, formats.Snapshot | formats.MatchStarted):
            return False
        guid = getattr(event, "match_guid", None)
        if guid:
            return True
        if isinstance(event, formats.Goal) and self.feed.current is not None:
            # A late goal still belongs to the current match if that one opened before it.
            current = self._match_by_id(self.feed.current)
            return current is not None and (current.opened_pos or 0) <= self.position
        return False

    # -- feeds and counters ---------------------------------------------------------------

    def _feed(self, name: str) -> _Feed:
        current, high = feed_row(self.conn, self.memo, name)
        return _Feed(name, current, high)

    def _advance_mark(self) -> None:
        if self.job.sequence is not None:
            self.feed.high_sequence = self.job.sequence
            self.changed = True

    def _save_feed(self) -> None:
        f = self.feed
        self.conn.execute(
            "INSERT INTO feeds (feed, current_match, high_sequence) VALUES (?, ?, ?) "
            "ON CONFLICT (feed) DO UPDATE SET current_match = excluded.current_match, "
            "high_sequence = excluded.high_sequence",
            (f.name, f.current, f.high_sequence),
        )
        self.memo[("feed", f.name)] = (f.current, f.high_sequence)

    def _count(self, name: str) -> None:
        if not self.revisit:  # counted the first time already
            self.conn.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (name,))

    # -- matches --------------------------------------------------------------------------

    def _match_by_id(self, match_id: int) -> _Match | None:
        return self._match_where("id = ?", match_id)

    def _match_where(self, where: str, value: Any) -> _Match | None:
        row = self.conn.execute(
            "SELECT id, guid, offline, ended_at IS NOT NULL, opened_pos, last_snapshot_ts "  # noqa: S608 - `where` is one of two constants
            f"FROM matches WHERE {where}",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return _Match(id=row[0], guid=row[1], offline=bool(row[2]), ended=bool(row[3]),
                      opened_pos=row[4], last_snapshot_ts=row[5])

    def _is_empty(self, match: _Match) -> bool:
        """True for a match opened by a start event that nothing has filled yet."""
        (empty,) = self.conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM match_players WHERE match_id = ?) "
            "AND NOT EXISTS (SELECT 1 FROM goals WHERE match_id = ?)",
            (match.id, match.id),
        ).fetchone()
        return bool(empty)

    def _create(self, guid: str | None) -> _Match:
        """A new match for this feed; it becomes the feed's current one."""
        job = self.job
        offline = not guid
        name = guid or f"offline:{self.feed.name or '-'}:{job.seq}"
        self._supersede_current()
        cur = self.conn.execute(
            "INSERT INTO matches (guid, feed, offline, started_at, opened_seq, opened_pos, "
            "last_event_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (name, self.feed.name, int(offline), job.received_at, job.seq, self.position,
             job.received_at),
        )
        (match_id,) = cur.fetchone()
        self.feed.current = match_id
        self.changed = True
        log.info("match_opened", match_id=match_id, guid=name, feed=self.feed.name)
        return _Match(id=match_id, guid=name, offline=offline, ended=False,
                      opened_pos=self.position, last_snapshot_ts=None)

    def _supersede_current(self) -> None:
        """A feed plays one match at a time: a new one ends the previous one."""
        if self.feed.current is None:
            return
        self._end(self.feed.current, winner=None, reason="superseded")

    def _end(self, match_id: int, *, winner: int | None, reason: str) -> None:
        cur = self.conn.execute(
            "UPDATE matches SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
            (self.job.received_at, reason, match_id),
        )
        if cur.rowcount:
            self.changed = True
            self.ended.append(match_id)
        if winner is None:
            winner = self._winner_by_score(match_id) if reason == "ended" else None
        if winner is not None:
            cur = self.conn.execute(
                "UPDATE matches SET winner = ? WHERE id = ? AND winner IS NOT ?",
                (winner, match_id, winner),
            )
            self.changed = self.changed or cur.rowcount > 0

    def _winner_by_score(self, match_id: int) -> int | None:
        rows = self.conn.execute(
            "SELECT num, score FROM match_teams WHERE match_id = ? AND score IS NOT NULL "
            "ORDER BY score DESC",
            (match_id,),
        ).fetchall()
        if len(rows) >= 2 and rows[0][1] > rows[1][1]:
            return int(rows[0][0])
        return None

    def _resolve(self, guid: str | None, *, snapshot: formats.Snapshot | None = None
                 ) -> _Match | None:
        """The match an event belongs to, opening one when the event starts a new match."""
        if guid:
            match = self._match_where("guid = ?", guid)
            if match is not None:
                if not self.late and self.feed.current != match.id and not match.ended:
                    newer = self.feed.current is None or match.id > self.feed.current
                    if newer:
                        self.feed.current = match.id
                return match
            if self.late:
                # A late fact about a match never seen: record it without touching the feed.
                playing, self.feed.current = self.feed.current, None
                match = self._create(guid)
                self.feed.current = playing
                return match
            current = self._current()
            if current is not None and current.offline and not current.ended \
                    and self._is_empty(current):
                # The start event came without the id (offline placeholder): adopt it.
                self.conn.execute("UPDATE matches SET guid = ?, offline = 0 WHERE id = ?",
                                  (guid, current.id))
                self.changed = True
                return dataclasses.replace(current, guid=guid, offline=False)
            return self._create(guid)
        current = self._current()
        if current is None:
            return self._create(None)
        if guid == "" and not current.offline:
            return self._create(None)  # the format says offline; the current one is online
        if snapshot is not None and current.offline and self._went_down(current, snapshot):
            return self._create(None)  # numbers went down: a new game without a start event
        return current

    def _current(self) -> _Match | None:
        if self.feed.current is None:
            return None
        return self._match_by_id(self.feed.current)

    def _went_down(self, match: _Match, snapshot: formats.Snapshot) -> bool:
        old = {
            row[0]: row[1:]
            for row in self.conn.execute(
                "SELECT p.key, mp.score, mp.goals FROM match_players mp "
                "JOIN players p ON p.id = mp.player_id WHERE mp.match_id = ?",
                (match.id,),
            )
        }
        for line in snapshot.players:
            before = old.get(_player_key(line))
            if before is None:
                continue
            for then, now in zip(before, (line.score, line.goals), strict=True):
                if then is not None and now is not None and now < then:
                    return True
        return False

    # -- events ---------------------------------------------------------------------------

    def _started(self, event: formats.MatchStarted) -> None:
        if event.match_guid:
            match = self._resolve(event.match_guid)
            self.match_id = None if match is None else match.id
            return
        current = self._current()
        if current is not None and current.offline and not current.ended \
                and self._is_empty(current):
            self.match_id = current.id
            return  # MatchInitialized right after MatchCreated: the same match
        self.match_id = self._create(None).id

    def _ended(self, event: formats.MatchEnded) -> None:
        match = self._resolve(event.match_guid) if event.match_guid else self._current()
        if match is None:
            return
        self.match_id = match.id
        self._end(match.id, winner=event.winner, reason="ended")

    def _closed(self, event: formats.MatchClosed) -> None:
        match = self._resolve(event.match_guid) if event.match_guid else self._current()
        if match is None:
            return
        self.match_id = match.id
        self._end(match.id, winner=None, reason="destroyed")
        if self.feed.current == match.id and not self.late:
            self.feed.current = None
            self.changed = True

    def _goal(self, goal: formats.Goal) -> None:
        if goal.match_guid:
            match = self._resolve(goal.match_guid)
        elif self.late:
            match = self._current()
        else:
            match = self._resolve(goal.match_guid)
        if match is None:
            return
        self.match_id = match.id
        scorer_id = self._player_id_in(match.id, goal.scorer, goal.scorer_id)
        x, y, z = goal.impact if goal.impact is not None else (None, None, None)
        # The clock of the match's latest snapshot is the goal's, unless the goal comes
        # late (after later snapshots were applied): then it is unknown.
        clock = None if self.late else self.conn.execute(
            "SELECT time_seconds, overtime FROM matches WHERE id = ?", (match.id,)).fetchone()
        cur = self.conn.execute(
            "INSERT INTO goals (match_id, seq, scorer, scorer_id, scorer_team, assister, speed, "
            "game_time, received_at, last_touch, impact_x, impact_y, impact_z, clock, overtime) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (match.id, self.job.seq, goal.scorer, scorer_id, goal.scorer_team, goal.assister,
             goal.speed, goal.game_time, self.job.received_at, goal.last_touch, x, y, z,
             *(clock if clock is not None and clock[0] is not None else (None, None))),
        )
        self.changed = self.changed or cur.rowcount > 0

    def _player_id_in(self, match_id: int, name: str, primary_id: str | None) -> int | None:
        if primary_id is not None:
            row = self.conn.execute(
                "SELECT id FROM players WHERE key = ?", (primary_id,)
            ).fetchone()
            if row is not None:
                return int(row[0])
        row = self.conn.execute(
            "SELECT player_id FROM match_players WHERE match_id = ? AND name = ? LIMIT 1",
            (match_id, name),
        ).fetchone()
        return None if row is None else int(row[0])

    def _snapshot(self, snap: formats.Snapshot) -> Outcome | None:
        if not snap.players and not snap.teams:
            return None  # nothing to keep, and no reason to open a match for it
        match = self._resolve(snap.match_guid, snapshot=snap)
        assert match is not None
        self.match_id = match.id
        if match.ended and not match.offline and self._went_down(match, snap):
            # A match that is over keeps its final scoreboard: a snapshot with a lower
            # score or fewer goals for a player is from before the end (the recording
            # played again from another source, a request that lost the race with
            # MatchEnded). One with equal or higher numbers still counts.
            self._count("stale_skipped")
            return "stale"
        if snap.timestamp is not None:
            if match.last_snapshot_ts is not None and snap.timestamp < match.last_snapshot_ts:
                self._count("stale_skipped")
                return "stale"
            if snap.timestamp != match.last_snapshot_ts:
                self.conn.execute("UPDATE matches SET last_snapshot_ts = ? WHERE id = ?",
                                  (snap.timestamp, match.id))
                self.changed = True
        self._match_fields(match, snap)
        for team in snap.teams:
            # A value the snapshot lacks (None) keeps the last known one: a colour once
            # seen stays, whatever a later message leaves out or sends malformed.
            key = ("team", match.id, team.num)
            values: tuple[Any, ...] = (team.name, team.score, team.color_primary,
                                       team.color_secondary)
            known = self.memo.get(key)
            if known is not None:
                values = tuple(v if v is not None else k for v, k in zip(values, known,
                                                                         strict=True))
                if values == known:
                    continue  # the row holds these: the upsert would change nothing
            cur = self.conn.execute(
                "INSERT INTO match_teams AS t (match_id, num, name, score, color_primary, "
                "color_secondary) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (match_id, num) DO UPDATE SET "
                "name = coalesce(excluded.name, t.name), "
                "score = coalesce(excluded.score, t.score), "
                "color_primary = coalesce(excluded.color_primary, t.color_primary), "
                "color_secondary = coalesce(excluded.color_secondary, t.color_secondary) "
                "WHERE t.name IS NOT coalesce(excluded.name, t.name) "
                "OR t.score IS NOT coalesce(excluded.score, t.score) "
                "OR t.color_primary IS NOT coalesce(excluded.color_primary, t.color_primary) "
                "OR t.color_secondary IS NOT "
                "coalesce(excluded.color_secondary, t.color_secondary)",
                (match.id, team.num, team.name, team.score, team.color_primary,
                 team.color_secondary),
            )
            self.changed = self.changed or cur.rowcount > 0
            if None in values:  # the row keeps a value this transaction has not seen
                self.memo.pop(key, None)
            else:
                self.memo[key] = values
        for line in snap.players:
            self._line(match.id, line)
        return None

    def _match_fields(self, match: _Match, snap: formats.Snapshot) -> None:
        cur = self.conn.execute(
            "UPDATE matches SET arena = coalesce(?, arena), playlist = coalesce(?, playlist), "
            "overtime = CASE WHEN overtime < ? THEN ? ELSE overtime END, "
            "time_seconds = coalesce(?, time_seconds) "
            "WHERE id = ? AND (arena IS NOT coalesce(?, arena) "
            "OR playlist IS NOT coalesce(?, playlist) OR overtime < ? "
            "OR time_seconds IS NOT coalesce(?, time_seconds))",
            (snap.arena, snap.playlist, int(snap.overtime), int(snap.overtime),
             snap.time_seconds, match.id, snap.arena, snap.playlist, int(snap.overtime),
             snap.time_seconds),
        )
        self.changed = self.changed or cur.rowcount > 0
        if snap.winner is not None:
            cur = self.conn.execute(
                "UPDATE matches SET winner = ? WHERE id = ? AND winner IS NOT ?",
                (snap.winner, match.id, snap.winner),
            )
            self.changed = self.changed or cur.rowcount > 0

    def _line(self, match_id: int, line: formats.PlayerLine) -> None:
        """Store a player's latest line in a match; careers change by the difference."""
        player_id, name_changed = self._player(line)
        key = ("line", match_id, player_id)
        old = self.memo.get(key)
        if old is None:
            old = self.conn.execute(
                "SELECT name, team, score, goals, shots, assists, saves, touches, demos "
                "FROM match_players WHERE match_id = ? AND player_id = ?",
                (match_id, player_id),
            ).fetchone()
            if old is not None:
                self.memo[key] = old = tuple(old)
        new_numbers = [getattr(line, f) for f in LINE_FIELDS]
        if old is None:
            numbers = [n if n is not None else 0 for n in new_numbers]
            team = line.team
            delta = numbers
            self.conn.execute(
                "INSERT INTO match_players (match_id, player_id, name, team, score, goals, "
                "shots, assists, saves, touches, demos, updated_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (match_id, player_id, line.name, team, *numbers, self.job.seq),
            )
            self.memo[key] = (line.name, team, *numbers)
            first = 1
        else:
            old_numbers = [n if n is not None else 0 for n in old[2:]]
            numbers = [o if n is None else n for n, o in zip(new_numbers, old_numbers,
                                                              strict=True)]
            team = old[1] if line.team is None else line.team
            if numbers == old_numbers and team == old[1] and line.name == old[0]:
                if name_changed:
                    self._touch_player(player_id, [0] * len(LINE_FIELDS), 0)
                return
            delta = [n - o for n, o in zip(numbers, old_numbers, strict=True)]
            self.conn.execute(
                "UPDATE match_players SET name = ?, team = ?, score = ?, goals = ?, shots = ?, "
                "assists = ?, saves = ?, touches = ?, demos = ?, updated_seq = ? "
                "WHERE match_id = ? AND player_id = ?",
                (line.name, team, *numbers, self.job.seq, match_id, player_id),
            )
            self.memo[key] = (line.name, team, *numbers)
            first = 0
        self._touch_player(player_id, delta, first)

    def _touch_player(self, player_id: int, delta: Sequence[int], first: int) -> None:
        self.conn.execute(
            "UPDATE players SET last_seq = ?, matches = matches + ?, score = score + ?, "
            "goals = goals + ?, shots = shots + ?, assists = assists + ?, saves = saves + ?, "
            "touches = touches + ?, demos = demos + ? WHERE id = ?",
            (self.job.seq, first, *delta, player_id),
        )
        self.changed = True

    def _player(self, line: formats.PlayerLine) -> tuple[int, bool]:
        """(players.id, whether its name or id changed), creating the player if new."""
        key = _player_key(line)
        memo_key = ("player", key)
        row = self.memo.get(memo_key)
        if row is None:
            row = self.conn.execute(
                "SELECT id, name, primary_id FROM players WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            (player_id,) = self.conn.execute(
                "INSERT INTO players (key, name, primary_id, last_seq) VALUES (?, ?, ?, ?) "
                "RETURNING id",
                (key, line.name, line.primary_id, self.job.seq),
            ).fetchone()
            self.memo[memo_key] = (int(player_id), line.name, line.primary_id)
            self.changed = True
            return int(player_id), False
        if row[1] != line.name and line.primary_id is not None:
            self.conn.execute("UPDATE players SET name = ? WHERE id = ?", (line.name, row[0]))
            self.memo[memo_key] = (int(row[0]), line.name, row[2])
            self.changed = True
            return int(row[0]), True
        self.memo[memo_key] = tuple(row)
        return int(row[0]), False


def _player_key(line: formats.PlayerLine) -> str:
    """A player is their account id; bots and id-less formats are known by name."""
    return line.primary_id if line.primary_id is not None else f"name:{line.name}"
