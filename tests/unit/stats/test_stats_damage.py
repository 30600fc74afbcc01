"""A damaged stats.db is refused in one line, never changed, and rebuilt from the archive.

The database is made by a real daemon (`--handler stats --handler archive`) from the
recorded match, POSTed in numbered batches in the worst order, so that replaying the
archive must honour each event's X-Source/X-Sequence to end in the same state. The
damage is real: random bytes over the whole file, garbage over table pages in the
middle of it, a file cut short. Every command runs as the real `collector` command.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.files import locked_data_dir
from collector.stats.damage import StatsDamagedError
from collector.stats.store import StatsStore
from tests.support.model import cli_env, one_line, request, run_cli, wait_until
from tests.support.paths import CAPTURE_JSONL
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

GUID = "1F7ED23011F1435166EBAB919DB5566D"
KINDS = ("garbage", "pages", "truncated")
REBUILD = "collector rebuild-stats --data-dir"


@dataclass(frozen=True, slots=True)
class Built:
    """A stopped daemon's data dir, and what its query API answered before it stopped."""

    data_dir: Path
    expected: dict[str, Any]  # CLI argument string -> the JSON the API answered


def with_goal(lines: list[bytes]) -> list[bytes]:
    """The recording with a real goal in the middle (goals carry their received_at)."""
    goal = {"Event": "GoalScored", "Data": json.dumps({
        "MatchGuid": GUID, "GoalSpeed": 91.5, "GoalTime": 20.0,
        "Scorer": {"Name": "Zone Killa", "Shortcut": 5, "TeamNum": 1}})}
    return [*lines[:250], json.dumps(goal).encode(), *lines[250:]]


def api(port: int, path: str) -> Any:
    answer = request(port, "GET", path)
    assert answer.status == 200, answer
    return answer.body


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """stats.db and archive/ of a daemon that took the recording, stopped cleanly."""
    root = tmp_path_factory.mktemp("built")
    server = ServerProcess(root / "data", args=["--handler", "stats", "--handler", "archive"])
    server.start()
    try:
        lines = with_goal(CAPTURE_JSONL.read_bytes().splitlines())
        starts = list(range(0, len(lines), 10))
        for start in reversed(starts):  # newest batch first: snapshots arrive stale
            answer = request(server.port, "POST", "/v1/events",
                             b"\n".join(lines[start:start + 10]) + b"\n",
                             {"Content-Type": "application/x-ndjson", "X-Source": "bridge",
                              "X-Sequence": str(start)})
            assert answer.status == 202, answer

        def drained() -> bool:
            q = request(server.port, "GET", "/v1/queue").body
            return bool(q["last_seq"] == len(lines) and q["pending"] == 0
                        and q["in_flight"] == 0)

        wait_until(drained, "the worker has applied every event", timeout=60)
        assert api(server.port, "/v1/stats")["stale_skipped"] > 0
        matches = api(server.port, "/v1/matches")
        (match,) = matches["matches"]
        players = api(server.port, "/v1/players")
        expected = {
            "matches": matches, "players": players,
            f"matches {match['id']}": api(server.port, f"/v1/matches/{match['id']}"),
            **{f"players {p['id']}": api(server.port, f"/v1/players/{p['id']}")
               for p in players["players"]},
        }
        assert expected[f"matches {match['id']}"]["goals"], "the goal is in"
    finally:
        assert server.terminate() == 0
    data_dir = root / "data"
    assert not (data_dir / "stats.db-wal").exists()  # a clean stop
    assert list((data_dir / "archive").glob("*.jsonl"))
    return Built(data_dir, expected)


@pytest.fixture
def data_dir(built: Built, tmp_path: Path) -> Path:
    """A copy of the built data dir for this test only."""
    copy = tmp_path / "data"
    shutil.copytree(built.data_dir, copy)
    return copy


# -- damage -------------------------------------------------------------------------------

def root_pages(path: Path, *tables: str) -> list[int]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                             (t,)).fetchone()[0] for t in tables]
    finally:
        conn.close()


def smash(path: Path, pages: list[int], seed: int = 16) -> None:
    """Overwrite whole pages (numbered from 1) with random bytes."""
    rng = random.Random(seed)
    with path.open("r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * 4096)
            fh.write(rng.randbytes(4096))


def damage(path: Path, kind: str) -> None:
    size = path.stat().st_size
    if kind == "garbage":
        path.write_bytes(random.Random(16).randbytes(size))
    elif kind == "pages":  # tables every open reads; their pages lie in the middle
        pages = root_pages(path, "applied", "matches", "players")
        assert all(1 < p < size // 4096 for p in pages), pages
        smash(path, pages)
    else:
        with path.open("r+b") as fh:
            fh.truncate(size // 3)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its digest (the lock file: only that it is
    there, as it holds the pid of the last process that took the lock)."""
    return {str(p.relative_to(directory)): "" if p.name == "collector.lock" else digest(p)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(result: subprocess.CompletedProcess[str], path: Path) -> str:
    """The one line of a refusal over a damaged stats.db."""
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stdout
    line = one_line(result.stderr)
    assert line.startswith("collector: error: statistics database "), line
    assert str(path) in line
    assert "is damaged (" in line
    assert f"{REBUILD} {path.parent}" in line
    return line


# -- refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["serve", "matches", "players"])
def test_a_damaged_stats_db_is_refused_in_one_line_and_left_as_it_is(
        data_dir: Path, tmp_path: Path, kind: str, command: str) -> None:
    path = data_dir / "stats.db"
    damage(path, kind)
    before = digest(path)
    if command == "serve":
        args = ["serve", "--handler", "stats", "--port", "0", "--data-dir", str(data_dir)]
    else:
        args = [command, "--data-dir", str(data_dir)]
    line = refused(run_cli(*args, cwd=tmp_path, timeout=30), path)
    expected = "file is not a database" if kind == "garbage" else "malformed"
    assert expected in line
    assert digest(path) == before
    assert not list(data_dir.glob("stats.db.*"))  # nothing moved aside but by rebuild-stats


@pytest.mark.parametrize("command", ["matches", "players"])
def test_without_a_daemon_the_commands_read_the_configured_data_dir_and_refuse(
        data_dir: Path, tmp_path: Path, command: str) -> None:
    path = data_dir / "stats.db"
    damage(path, "pages")
    config = tmp_path / "collector.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\nport = {free_port()}\n')
    refused(run_cli(command, "--config", str(config), cwd=tmp_path), path)


def commit_without_closing(path: Path) -> None:
    """A writer that changes one small row and dies: frames in the WAL, no clean close."""
    script = ("import os, sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute(\"UPDATE counters SET value = value + 1 \"\n"
              "             \"WHERE name = 'bogus_goals'\")\n"
              "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=cli_env(),
                   timeout=60)
    assert Path(f"{path}-wal").stat().st_size > 0


def test_after_an_unclean_stop_the_quick_check_finds_damage_no_open_reads(
        data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "stats.db"
    commit_without_closing(path)
    smash(path, root_pages(path, "goals"))  # no open reads it; quick_check does
    before = (digest(path), digest(Path(f"{path}-wal")))
    line = refused(run_cli("serve", "--handler", "stats", "--port", "0", "--data-dir",
                           str(data_dir), cwd=tmp_path, timeout=30), path)
    assert "malformed" in line
    assert (digest(path), digest(Path(f"{path}-wal"))) == before  # the WAL kept too


def test_damage_met_while_serving_is_a_json_503_and_one_log_line(
        data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "stats.db"
    smash(path, root_pages(path, "match_teams"))  # read by the match list, not at open
    server = ServerProcess(data_dir, args=["--handler", "stats"])
    server.start()  # a clean stop before: no quick_check, and the open reads are sound
    try:
        answer = request(server.port, "GET", "/v1/matches")
        assert answer.status == 503, answer
        assert answer.body["error"] == "stats_unavailable"
        assert str(path) in answer.body["detail"]
        assert f"{REBUILD} {data_dir}" in answer.body["detail"]
        again = request(server.port, "GET", "/v1/matches/1")
        assert (again.status, again.body["error"]) == (503, "stats_unavailable")
        assert request(server.port, "GET", "/healthz").status == 200

        via_daemon = run_cli("matches", "--url", server.url, cwd=tmp_path)
        assert via_daemon.returncode == 1
        line = one_line(via_daemon.stderr)
        assert "HTTP 503 stats_unavailable" in line
        assert REBUILD in line
    finally:
        assert server.terminate() == 0
    log = server.output()
    assert "Traceback" not in log
    damaged = [json.loads(x) for x in log.splitlines() if '"stats_damaged"' in x]
    assert len(damaged) == 1, log[-3000:]  # once, with what to do
    assert damaged[0]["level"] == "error"
    assert damaged[0]["path"] == str(path)
    assert damaged[0]["fix"] == f"{REBUILD} {data_dir}"


async def test_the_store_raises_stats_damaged_error_and_closes(data_dir: Path) -> None:
    damage(data_dir / "stats.db", "garbage")
    for readonly in (False, True):
        store = StatsStore(data_dir, readonly=readonly)
        with pytest.raises(StatsDamagedError) as caught:
            await store.open()
        await store.close()
        assert caught.value.problem == "file is not a database"
        assert caught.value.path == data_dir / "stats.db"


# -- rebuild-stats ------------------------------------------------------------------------

def cli_json(data_dir: Path, cwd: Path, *args: str) -> Any:
    result = run_cli(*args, "--json", "--data-dir", str(data_dir), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same_as_built(built: Built, data_dir: Path, cwd: Path) -> None:
    for what, answer in built.expected.items():
        assert cli_json(data_dir, cwd, *what.split()) == answer, what


@pytest.mark.parametrize("kind", KINDS)
def test_rebuild_from_the_archive_gives_the_same_matches_and_players(
        built: Built, data_dir: Path, tmp_path: Path, kind: str) -> None:
    path = data_dir / "stats.db"
    damage(path, kind)
    damaged = path.read_bytes()

    result = run_cli("rebuild-stats", "--data-dir", str(data_dir), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = result.stdout
    (aside,) = data_dir.glob("stats.db.damaged-*[0-9]")
    assert aside.read_bytes() == damaged  # kept, never deleted or written
    assert f"moved {path} (damaged: " in report
    assert f"to {aside} (kept, not deleted)" in report
    assert f"replayed 439 archived events (seqs 1-439, from 1 day file) into a fresh {path}" \
        in report
    assert "queue.db holds 0 pending jobs (last seq 439)" in report
    same_as_built(built, data_dir, tmp_path)
    # The rebuilt file is an ordinary one: the daemon starts on it and serves the same.
    server = ServerProcess(data_dir, args=["--handler", "stats", "--handler", "archive"])
    server.start()
    try:
        assert api(server.port, "/v1/matches") == built.expected["matches"]
    finally:
        assert server.terminate() == 0


def test_rebuild_json_and_a_sound_file_wants_force(built: Built, data_dir: Path,
                                                   tmp_path: Path) -> None:
    before = snapshot(data_dir)
    sound = run_cli("rebuild-stats", "--data-dir", str(data_dir), cwd=tmp_path)
    assert sound.returncode == 0
    assert "is sound: nothing to rebuild (--force" in sound.stdout
    assert snapshot(data_dir) == before

    forced = cli_json(data_dir, tmp_path, "rebuild-stats", "--force")
    assert forced["state"] == "sound"
    assert (forced["events"], forced["first_seq"], forced["last_seq"]) == (439, 1, 439)
    assert Path(forced["moved_to"]).name.startswith("stats.db.old-")
    assert digest(Path(forced["moved_to"])) == before["stats.db"]
    same_as_built(built, data_dir, tmp_path)


def test_rebuild_without_an_archive_says_so_and_starts_empty_only_when_told(
        data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "stats.db"
    shutil.rmtree(data_dir / "archive")
    damage(path, "garbage")
    damaged = path.read_bytes()

    asked = subprocess.run(  # no terminal to ask on: refused, nothing assumed
        [sys.executable, "-m", "collector", "rebuild-stats", "--data-dir", str(data_dir)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False)
    assert asked.returncode == 1
    line = one_line(asked.stderr)
    assert f"no archive in {data_dir / 'archive'}" in line
    assert "cannot be rebuilt" in line
    assert f"collector rebuild-stats --empty --data-dir {data_dir}" in line
    assert path.read_bytes() == damaged
    assert not list(data_dir.glob("stats.db.*"))

    empty = run_cli("rebuild-stats", "--empty", "--data-dir", str(data_dir), cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr
    (aside,) = data_dir.glob("stats.db.damaged-*[0-9]")
    assert aside.read_bytes() == damaged
    assert f"started an empty {path}" in empty.stdout
    assert "cannot be rebuilt without an archive; the new file fills with new matches" \
        in empty.stdout
    assert "queue.db holds 0 pending jobs" in empty.stdout
    assert cli_json(data_dir, tmp_path, "matches") == {"matches": [], "next": None}


def test_rebuild_is_refused_while_a_daemon_holds_the_data_dir(
        data_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(data_dir, args=["--handler", "stats"])
    server.start()
    try:
        before = digest(data_dir / "stats.db")
        result = run_cli("rebuild-stats", "--force", "--data-dir", str(data_dir),
                         cwd=tmp_path)
        assert result.returncode == 1
        line = one_line(result.stderr)
        assert "in use by another collector" in line
        assert "stop the daemon first" in line
        assert digest(data_dir / "stats.db") == before
        assert not list(data_dir.glob("stats.db.*"))
        assert not list(data_dir.glob(".rebuild-stats-*"))
    finally:
        assert server.terminate() == 0
    with locked_data_dir(data_dir):  # what a daemon holds, taken in this process
        held = run_cli("rebuild-stats", "--data-dir", str(data_dir), cwd=tmp_path)
    assert held.returncode == 1
    assert "in use by another collector" in one_line(held.stderr)


@pytest.mark.parametrize("archive", ["kept", "removed"])
def test_rebuild_dry_run_changes_nothing(data_dir: Path, tmp_path: Path,
                                         archive: str) -> None:
    path = data_dir / "stats.db"
    damage(path, "pages")
    if archive == "removed":
        shutil.rmtree(data_dir / "archive")
    before = snapshot(data_dir)
    args = ["rebuild-stats", "--dry-run", "--data-dir", str(data_dir)]
    result = run_cli(*args, *(["--empty"] if archive == "removed" else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"would move {path} (damaged: " in result.stdout
    assert "nothing was changed" in result.stdout
    if archive == "kept":
        assert "replay 439 archived events (seqs 1-439" in result.stdout
    else:
        assert f"start an empty {path}" in result.stdout
    assert snapshot(data_dir) == before


# -- reading the archive ------------------------------------------------------------------

def archive_line(seq: int, *, revived: bool = False) -> bytes:
    record: dict[str, Any] = {"seq": seq}
    if revived:
        record["revived"] = True
    record.update(received_at=1000.0 + seq, source=None, sequence=None,
                  payload={"Event": "Nothing", "n": seq})
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def seqs_replayed(files: list[Path]) -> Iterator[int]:
    from collector.cli.maintenance import _Replay, archive_files, archived_jobs

    seen = _Replay()
    assert archive_files(files[0].parent) == files
    for job in archived_jobs(files, seen):
        assert job.received_at == 1000.0 + job.seq
        yield job.seq


def test_the_archive_is_read_in_seq_order_once(tmp_path: Path) -> None:
    """Days in order; a revived dead letter at its place; a day in both forms once."""
    import gzip

    archive = tmp_path / "archive"
    archive.mkdir()
    with gzip.open(archive / "2026-01-01.jsonl.gz", "wb") as fh:
        fh.write(b"".join(archive_line(s) for s in (1, 2, 4)))
    # A compression cut short: the .jsonl is still there, its lines inside the .gz too.
    (archive / "2026-01-01.jsonl").write_bytes(archive_line(4) + archive_line(5))
    (archive / "2026-01-02.jsonl").write_bytes(
        archive_line(6) + archive_line(3, revived=True) + archive_line(7))
    (archive / "notes.txt").write_text("not a day file")
    files = [archive / "2026-01-01.jsonl.gz", archive / "2026-01-01.jsonl",
             archive / "2026-01-02.jsonl"]
    assert list(seqs_replayed(files)) == [1, 2, 3, 4, 5, 6, 7]
