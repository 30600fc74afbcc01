"""The real `collector` command line against a PostgreSQL-mode node (issue 20).

The admin commands talk to a node over HTTP (`--url`) and must answer as in the SQLite
mode; the commands that work on a data dir's SQLite files (`check`, `recover`,
`rebuild-stats`, and the admin commands given `--data-dir` without `--url`) must refuse
with one line and exit 2 when the configured queue is in PostgreSQL, and change nothing.

The node's handlers: `refuse_bad` dead-letters events marked "bad" (PermanentError),
then the recorder's `slow` holds the first good event for an hour, so that the line
stays as posted while the commands look at it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.model import cli_env, one_line, post_events, request, run_cli, wait_until
from tests.support.postgres import Cluster, node, running
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

#: Posted first, from one sender: seqs 1 and 2 are dead-lettered, 3 is held in flight.
_EVENTS = [{"n": 1, "bad": True}, {"n": 2, "bad": True}, {"n": 3}, {"n": 4}, {"n": 5}]
_REFUSAL = ("and the queue and statistics are in PostgreSQL ([postgres] dsn is set)")
_MIGRATE = ("an old SQLite data dir goes into PostgreSQL with `collector migrate` (or is "
            "worked on without the [postgres] settings)")


def _held_node(tmp_path: Path, dsn: str) -> ServerProcess:
    server = node(tmp_path, dsn, "node0", tmp_path / "applied.txt",
                  args=["--handler", "tests.support.handlers:refuse_bad",
                        "--handler", "tests.support.recorder:slow"])
    server.env.update(RECORDER_DELAY="3600", COLLECTOR_WORKER_HANDLER_TIMEOUT="3600")
    return server


def _posted(server: ServerProcess) -> None:
    """The events posted, the two bad ones dead, the first good one in flight."""
    answer = post_events(server.port, _EVENTS, {"X-Source": "pc", "X-Sequence": "1"})
    assert answer.status == 202, answer.body
    assert (answer.body["first_seq"], answer.body["last_seq"]) == (1, 5)
    wait_until(lambda: request(server.port, "GET", "/v1/queue").body["dead"] == 2,
               "the bad events dead-lettered")
    record = Path(server.env["RECORDER_FILE"])
    wait_until(lambda: record.exists(), "the first good event in the handler")


def _cli(tmp_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`collector ARGS` run as an operator of the PostgreSQL mode would: DSN configured."""
    return run_cli(*args, cwd=tmp_path, env=cli_env(COLLECTOR_POSTGRES_DSN=dsn))


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def _rows(stdout: str) -> dict[str, str]:
    """`collector status` lines (`name   value`) as a dict; names are padded to 15."""
    return {line[:15].strip(): line[16:] for line in stdout.splitlines()}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_status_peek_export_import(postgres_cluster: Cluster, pg_dsn: str,
                                         tmp_path: Path) -> None:
    """`status`, `queue peek`, `export` and `import` with --url at a PostgreSQL node: the
    figures of the shared log, the line in seq order (the job in flight first), an export
    that imports back at the tail, once."""
    server = _held_node(tmp_path, pg_dsn)
    with running([server]):
        _posted(server)
        url = server.url
        rows = _rows(_ok(_cli(tmp_path, pg_dsn, "status", "--url", url)))
        assert (rows["from"], rows["state"], rows["pending"], rows["dead letters"],
                rows["processed"], rows["last seq"]) == (url, "ready", "3", "2", "0", "5")
        assert rows["node"] == "node0 (leader, runs the worker)"
        status = json.loads(_ok(_cli(tmp_path, pg_dsn, "status", "--url", url, "--json")))
        assert (status["node"], status["leader"], status["in_flight"]) == ("node0", True, 1)

        peek = json.loads(_ok(_cli(tmp_path, pg_dsn, "queue", "peek", "--url", url,
                                   "--json")))
        assert [(j["seq"], j["payload"], j["source"], j["sequence"]) for j in peek] == [
            (3, {"n": 3}, "pc", 3), (4, {"n": 4}, "pc", 4), (5, {"n": 5}, "pc", 5)]
        text = _ok(_cli(tmp_path, pg_dsn, "queue", "peek", "--url", url, "--limit", "2"))
        assert [line.split()[0] for line in text.splitlines()] == ["seq", "3", "4"]
        assert "pc#3" in text

        exported = tmp_path / "pending.jsonl"
        done = _cli(tmp_path, pg_dsn, "export", "--url", url, "-o", str(exported))
        _ok(done)
        assert one_line(done.stderr) == "exported 3 pending jobs (last seq 5)"
        assert [(j["seq"], j["payload"]) for j in _lines(exported)] == [
            (3, {"n": 3}), (4, {"n": 4}), (5, {"n": 5})]

        done = _cli(tmp_path, pg_dsn, "import", str(exported), "--url", url)
        _ok(done)
        assert one_line(done.stderr) == "imported 3 jobs"
        done = _cli(tmp_path, pg_dsn, "import", str(exported), "--url", url)
        _ok(done)
        assert one_line(done.stderr) == \
            "imported 0 jobs; 3 were imported before (same Idempotency-Key)"
        again = tmp_path / "again.jsonl"
        _ok(_cli(tmp_path, pg_dsn, "export", "--url", url, "-o", str(again)))
        assert [(j["seq"], j["payload"], j["source"], j["sequence"])
                for j in _lines(again)] == [
            (3, {"n": 3}, "pc", 3), (4, {"n": 4}, "pc", 4), (5, {"n": 5}, "pc", 5),
            (6, {"n": 3}, "pc", 3), (7, {"n": 4}, "pc", 4), (8, {"n": 5}, "pc", 5)]
        rows = _rows(_ok(_cli(tmp_path, pg_dsn, "status", "--url", url)))
        assert (rows["pending"], rows["last seq"]) == ("6", "8")
    assert not (server.data_dir / "queue.db").exists()  # nothing went to a SQLite file


def test_serve_check_leaves_a_left_over_queue_file_alone(pg_dsn: str, tmp_path: Path) -> None:
    """`serve --check` in the PostgreSQL mode: the queue is in the database, so a damaged
    queue.db left in the data dir (say, the one `collector migrate` read) does not stop
    the node, and is kept as it was."""
    server = node(tmp_path, pg_dsn, "node0", tmp_path / "applied.txt",
                  args=["--check", "--handler", "tests.support.recorder:record"])
    server.data_dir.mkdir()
    junk = b"SQLite format 3\0" + bytes(range(256)) * 64
    (server.data_dir / "queue.db").write_bytes(junk)
    with running([server]):
        answer = post_events(server.port, [{"n": 1}], {})
        assert answer.status == 202, answer.body
    assert (server.data_dir / "queue.db").read_bytes() == junk


def test_dead_letters(postgres_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    """`dead list`, `show`, `retry` (in place: next in line, under its old seq) and `drop`
    with --url at a PostgreSQL node, and their refusals of seqs that are not dead."""
    server = _held_node(tmp_path, pg_dsn)
    with running([server]):
        _posted(server)
        url = server.url
        listing = _ok(_cli(tmp_path, pg_dsn, "dead", "list", "--url", url)).splitlines()
        assert listing[0].split() == ["seq", "failed", "at", "tries", "source#seq", "error"]
        assert [line.split()[0] for line in listing[1:3]] == ["1", "2"]
        assert listing[1].endswith("pc#1              PermanentError: refused 1")
        assert listing[2].endswith("pc#2              PermanentError: refused 2")
        assert listing[3:] == ["2 dead letter(s)"]
        page = json.loads(_ok(_cli(tmp_path, pg_dsn, "dead", "list", "--url", url, "--json")))
        assert (page["total"], [d["seq"] for d in page["dead"]]) == (2, [1, 2])

        shown = json.loads(_ok(_cli(tmp_path, pg_dsn, "dead", "show", "2", "--url", url)))
        assert (shown["seq"], shown["payload"], shown["error"], shown["attempts"],
                shown["source"], shown["sequence"]) == \
            (2, _EVENTS[1], "PermanentError: refused 2", 1, "pc", 2)

        done = _cli(tmp_path, pg_dsn, "dead", "retry", "2", "7", "--url", url)
        assert done.returncode == 1
        assert one_line(done.stderr) == \
            "collector: error: no dead letter with seq 7; nothing was retried"
        assert _ok(_cli(tmp_path, pg_dsn, "dead", "retry", "2", "--url", url)) == \
            "retried 1 in their old place: seqs 2\n"
        peek = json.loads(_ok(_cli(tmp_path, pg_dsn, "queue", "peek", "--url", url,
                                   "--json")))
        assert [j["seq"] for j in peek] == [2, 3, 4, 5]  # back in its place: next up

        assert _ok(_cli(tmp_path, pg_dsn, "dead", "drop", "1", "--url", url)) == "dropped 1\n"
        done = _cli(tmp_path, pg_dsn, "dead", "show", "1", "--url", url)
        assert done.returncode == 1
        assert one_line(done.stderr) == "collector: error: no dead letter with seq 1"
        assert _ok(_cli(tmp_path, pg_dsn, "dead", "list", "--url", url)).splitlines()[1:] \
            == ["0 dead letter(s)"]
        assert _rows(_ok(_cli(tmp_path, pg_dsn, "status", "--url", url)))["dead letters"] \
            == "0"



def test_export_when_postgresql_goes_away(own_cluster: Cluster, tmp_path: Path) -> None:
    """PostgreSQL stopped while `collector export` streams GET /v1/pending: the export
    fails with one line and exit 1 (the body ends without its last chunk), never a hang
    nor a short export that looks whole; the lines it did write are the first jobs, in
    order. While PostgreSQL is down, /v1/pending is a 503 with Retry-After before the
    stream begins, and `export` says so."""
    dsn = own_cluster.dsn(own_cluster.create_database())
    server = _held_node(tmp_path, dsn)
    pad = "x" * 2000  # 20 MB in all: far more than the sockets between them can hold
    with running([server]):
        for first in range(0, 10_000, 500):
            answer = post_events(server.port, [{"n": n, "pad": pad}
                                               for n in range(first, first + 500)])
            assert answer.status == 202, answer.body
        export = subprocess.Popen(
            [sys.executable, "-m", "collector", "export", "--url", server.url],
            cwd=tmp_path, env=cli_env(COLLECTOR_POSTGRES_DSN=dsn), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0)  # unbuffered: communicate() reads the rest
        try:
            assert export.stdout is not None
            head = export.stdout.readline()  # the stream has begun; the rest waits on us
            own_cluster.stop_server("immediate")
            rest, err = export.communicate(timeout=60)
        finally:
            export.kill()
        assert export.returncode == 1, err
        line = one_line(err.decode())
        assert line.startswith(f"collector: error: GET {server.url}/v1/pending: "), line
        jobs = [json.loads(text) for text in (head + rest).splitlines()]
        assert 0 < len(jobs) < 10_000
        assert [j["payload"]["n"] for j in jobs] == list(range(len(jobs)))

        down = request(server.port, "GET", "/v1/pending")
        assert (down.status, down.body["error"]) == (503, "storage_unavailable"), down.body
        assert down.headers["retry-after"] == "5"
        done = _cli(tmp_path, dsn, "export", "--url", server.url)
        assert done.returncode == 1
        assert one_line(done.stderr).startswith(
            f"collector: error: GET {server.url}/v1/pending: HTTP 503 storage_unavailable: ")
        assert done.stdout == ""
    assert "export_failed" in server.output()


@pytest.mark.parametrize(("command", "does", "instead"), [
    (["check"], "`collector check` reads the data dir's SQLite queue file",
     "ask a node instead: `collector status --url URL`"),
    (["check", "--full", "--json"], "`collector check` reads the data dir's SQLite queue file",
     "ask a node instead: `collector status --url URL`"),
    (["recover", "--force"], "`collector recover` rebuilds the data dir's SQLite queue file",
     "PostgreSQL recovers its own; ask a node: `collector status --url URL`"),
    (["rebuild-stats", "--empty"], "`collector rebuild-stats` rebuilds the data dir's stats.db",
     "there is nothing in the data dir to rebuild"),
    *[(args, f"`collector {args[0]} --data-dir` works on the data dir's SQLite queue file",
       "ask a node instead: --url URL, without --data-dir") for args in [
        ["status"], ["dead", "list"], ["dead", "retry", "--all"], ["dead", "drop", "1"],
        ["queue", "peek"], ["export"], ["import", "-"]]],
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_data_dir_commands_refused(tmp_path: Path, command: list[str], does: str,
                                   instead: str) -> None:
    """With a DSN configured, a command on the data dir's SQLite files is one line and
    exit 2, saying where the queue is and what to do instead; the data dir is untouched
    (here one that a SQLite-mode daemon would use: its queue file must not be opened)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "queue.db").write_bytes(b"")  # a file no command may open or replace
    dsn = "postgresql://collector:secret@127.0.0.1:1/collector"
    done = run_cli(*command, "--data-dir", str(data_dir), cwd=tmp_path,
                   env=cli_env(COLLECTOR_POSTGRES_DSN=dsn))
    assert done.returncode == 2, done.stdout + done.stderr
    assert one_line(done.stderr) == f"collector: error: {does}, {_REFUSAL}: {instead}; {_MIGRATE}"
    assert done.stdout == ""
    assert "secret" not in done.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["queue.db"]
    assert (data_dir / "queue.db").read_bytes() == b""


def test_dsn_from_the_config_file_refuses_too(tmp_path: Path) -> None:
    """[postgres] dsn_file in the config file counts like the environment variable."""
    (tmp_path / "dsn").write_text("postgresql://collector@127.0.0.1:1/collector\n")
    config = tmp_path / "collector.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[postgres]\ndsn_file = "{tmp_path / "dsn"}"\n')
    done = run_cli("check", "--config", str(config), cwd=tmp_path, env=cli_env())
    assert done.returncode == 2
    assert _REFUSAL in one_line(done.stderr)
    done = run_cli("export", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                   cwd=tmp_path, env=cli_env())
    assert done.returncode == 2
    assert _REFUSAL in one_line(done.stderr)


def test_sqlite_mode_unchanged(tmp_path: Path) -> None:
    """Without a DSN the same commands work on the data dir as before (also on an old
    SQLite data dir, before `collector migrate`)."""
    data_dir = tmp_path / "data"
    done = run_cli("check", "--data-dir", str(data_dir), cwd=tmp_path, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"no queue file {data_dir / 'queue.db'} yet: nothing to check\n"
    data_dir.mkdir()
    done = run_cli("export", "--data-dir", str(data_dir), cwd=tmp_path, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert one_line(done.stderr) == "exported 0 pending jobs (last seq 0)"
