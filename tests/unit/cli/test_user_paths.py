"""What a user trips over, run as the user would: the real `collector` command in a
subprocess, its exit code, its one line, never a traceback (issue 16)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collector.files import DAEMON_FILE, LOCK_FILE, exclusive_lock
from collector.stats.store import StatsStore
from tests.support.model import cli_env, one_line, post_events, request, run_cli, wait_until
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def _rows(stdout: str) -> dict[str, str]:
    """`collector status` lines (`name   value`) as a dict; names are padded to 15."""
    return {line[:15].strip(): line[16:] for line in stdout.splitlines()}


def _config(tmp_path: Path, server: ServerProcess, *, token_file: Path | None = None) -> Path:
    """A config naming the server's port and data dir, as scripts/install.sh writes one."""
    lines = ["[server]", f"port = {server.port}", f'data_dir = "{server.data_dir}"']
    if token_file is not None:
        lines.append(f'token_file = "{token_file}"')
    config = tmp_path / "collector.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_status_with_the_data_dir_of_a_running_daemon_asks_it(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        assert post_events(server.port, [{"n": 1}, {"n": 2}]).status == 202
        wait_until(lambda: request(server.port, "GET", "/v1/queue").body["processed_total"]
                   == 2, "both events processed")
        done = run_cli("status", "--data-dir", str(server.data_dir), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = _rows(done.stdout)
        assert (rows["from"], rows["state"], rows["processed"]) == (server.url, "ready", "2")
        assert "clean" not in done.stdout  # a running daemon is not a shutdown to judge
    finally:
        assert server.terminate() == 0
    assert not (server.data_dir / DAEMON_FILE).exists()  # forgotten at a clean stop


def test_status_says_running_with_its_pid_when_the_daemon_cannot_be_asked(
    tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        assert server.proc is not None
        (server.data_dir / DAEMON_FILE).unlink()  # where it answers is not known any more
        done = run_cli("status", "--data-dir", str(server.data_dir), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"state           running (pid {server.proc.pid})" in done.stdout.splitlines()
        stopped = run_cli("status", "--json", "--data-dir", str(server.data_dir), cwd=tmp_path)
        assert json.loads(stopped.stdout)["running"] is True
    finally:
        assert server.terminate() == 0
    after = run_cli("status", "--data-dir", str(server.data_dir), cwd=tmp_path)
    assert after.returncode == 3, after.stdout + after.stderr
    assert "state           not ready: the daemon is stopped" in after.stdout.splitlines()


def test_the_stats_commands_find_the_daemon_from_any_folder_with_a_token_file(
    tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = ServerProcess(tmp_path / "data", args=["--handler", "stats"],
                           env={"COLLECTOR_SERVER_TOKEN_FILE": str(token_file)})
    server.start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        event = {"Event": "UpdateState", "Data": json.dumps({
            "MatchGuid": "AB12", "Players": [{"Name": "Ann", "PrimaryId": "Steam|1|0",
                                              "TeamNum": 0, "Score": 10}]})}
        answer = post_events(server.port, event,
                             headers={"Authorization": "Bearer s3cret-token"})
        assert answer.status == 202
        config = _config(tmp_path, server, token_file=token_file)

        def guids() -> list[str]:
            done = run_cli("matches", "--json", "--config", str(config), cwd=elsewhere)
            assert done.returncode == 0, done.stderr
            return [m["guid"] for m in json.loads(done.stdout)["matches"]]

        wait_until(lambda: guids() == ["AB12"], "the match listed through the daemon")
        listed = run_cli("players", "--json", "--config", str(config), cwd=elsewhere)
        assert listed.returncode == 0, listed.stderr
        assert [p["name"] for p in json.loads(listed.stdout)["players"]] == ["Ann"]
        # --token-file on the command line, the address with --url
        plain = tmp_path / "plain.toml"
        plain.write_text("")
        by_flag = run_cli("players", "--json", "--config", str(plain), "--url", server.url,
                          "--token-file", str(token_file), cwd=elsewhere)
        assert by_flag.returncode == 0, by_flag.stderr
        wrong = tmp_path / "wrong"
        wrong.write_text("nope\n")
        refused = run_cli("players", "--url", server.url, "--token-file", str(wrong),
                          cwd=elsewhere)
        assert refused.returncode == 1
        assert one_line(refused.stderr) == (
            f"collector: error: GET {server.url}/v1/players: HTTP 401 unauthorized: "
            "missing or wrong bearer token")
    finally:
        assert server.terminate() == 0


def test_serving_on_the_network_without_a_token_warns_in_the_log_and_in_status(
    tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "data", args=["--handler", "noop", "--host", "0.0.0.0"])  # noqa: S104
    server.start()
    try:
        warnings = request(server.port, "GET", "/v1/queue").body["warnings"]
        expected = (f"listening on http://0.0.0.0:{server.port} without a token: anyone who "
                    "can reach it can post events and drop dead letters "
                    "(set server.token_file)")
        assert warnings == [expected]
        done = run_cli("status", "--url", server.url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"WARNING         {expected}" in done.stdout.splitlines()
    finally:
        assert server.terminate() == 0
    logged = [json.loads(line) for line in server.output().splitlines()
              if '"listening_without_token"' in line]
    assert [(e["level"], e["detail"]) for e in logged] == [("warning", expected)]


def test_serving_on_loopback_or_with_a_token_does_not_warn(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    for server in (ServerProcess(tmp_path / "a"),
                   ServerProcess(tmp_path / "b", args=["--handler", "noop", "--host", "0.0.0.0"],  # noqa: S104
                                 env={"COLLECTOR_SERVER_TOKEN_FILE": str(token_file)})):
        server.start()
        try:
            queue = request(server.port, "GET", "/v1/queue",
                            headers={"Authorization": "Bearer t0ken"}).body
            assert queue["warnings"] == []
        finally:
            assert server.terminate() == 0
        assert "listening_without_token" not in server.output()


def test_retry_or_drop_of_a_seq_that_is_no_dead_letter_says_so(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        for action, verb in (("retry", "retried"), ("drop", "dropped")):
            done = run_cli("dead", action, "5", "7", "--url", server.url, cwd=tmp_path)
            assert done.returncode == 1, done.stdout
            assert one_line(done.stderr) == (
                f"collector: error: no dead letter with seq 5,7; nothing was {verb}")
            assert done.stdout == ""
    finally:
        assert server.terminate() == 0


def test_a_restart_after_kill_9_says_what_it_found(tmp_path: Path) -> None:
    held = tmp_path / "never-opened"
    server = ServerProcess(tmp_path / "data", args=["--handler", "tests.support.model:held"],
                           env={"MODEL_GATE_FILE": str(held),
                                "MODEL_RECORD_FILE": str(tmp_path / "record")})
    server.start()
    assert post_events(server.port, [{"n": n} for n in range(3)]).status == 202
    server.kill()
    again = ServerProcess(server.data_dir, args=["--handler", "noop"])
    again.port = server.port
    again.log_path = tmp_path / "again.log"
    again.start()
    try:
        found = [json.loads(line) for line in again.output().splitlines()
                 if '"unclean_stop_found"' in line]
        assert [(e["level"], e["check"], e["jobs_to_replay"], e["replay_from_seq"])
                for e in found] == [("info", "quick_check passed", 3, 1)]
    finally:
        assert again.terminate() == 0
    clean = ServerProcess(server.data_dir)
    clean.log_path = tmp_path / "clean.log"
    clean.start()
    assert clean.terminate() == 0
    assert "unclean_stop_found" not in clean.output()  # a clean stop says nothing


def test_the_start_line_shows_only_the_settings_that_differ(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data",
                           env={"COLLECTOR_WORKER_MAX_ATTEMPTS": "9",
                                "COLLECTOR_SERVER_TOKEN": "hidden-value"})
    server.start()
    assert server.terminate() == 0
    (start,) = [json.loads(line) for line in server.output().splitlines()
                if '"event":"starting"' in line]
    assert start["settings_changed"] == {
        "server": {"port": server.port, "data_dir": str(server.data_dir), "token": "***"},
        "worker": {"max_attempts": 9, "handlers": ["noop"]},
    }
    assert "hidden-value" not in server.output()


def test_matches_with_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("x")
    for command in ("matches", "players", "status"):
        done = run_cli(command, "--data-dir", str(not_a_dir), cwd=tmp_path,
                       env=cli_env())
        assert done.returncode == 1, (command, done.stdout)
        assert one_line(done.stderr) == (
            f"collector: error: data dir {not_a_dir} is a file, not a folder")


def test_ctrl_c_stops_serve_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0
    assert "Traceback" not in server.output()
    assert os.path.exists(server.data_dir / "queue.db")


def test_every_data_dir_command_says_when_the_data_dir_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("x")
    for command in (("check",), ("recover",), ("rebuild-stats",), ("dead", "list"),
                    ("queue", "peek"), ("export",)):
        done = run_cli(*command, "--data-dir", str(not_a_dir), cwd=tmp_path)
        assert done.returncode == 1, (command, done.stdout)
        assert one_line(done.stderr) == (
            f"collector: error: data dir {not_a_dir} is a file, not a folder"), command


def test_an_unreachable_daemon_is_said_plainly_by_every_command(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    for command, path in ((("status",), "/v1/queue"), (("export",), "/v1/pending"),
                          (("dead", "list"), "/v1/dead"), (("queue", "peek"), "/v1/queue/peek"),
                          (("matches",), "/v1/matches")):
        done = run_cli(*command, "--url", url, cwd=tmp_path)
        assert done.returncode == 1, (command, done.stdout)
        assert one_line(done.stderr) == (
            f"collector: error: GET {url}{path}: cannot connect to {url} (connection refused)"
        ), command


def test_a_usage_error_is_one_line_with_where_to_read_more(tmp_path: Path) -> None:
    done = run_cli("dead", "retry", "x", cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == ("collector dead retry: error: argument SEQ: not an integer: "
                                     "'x' (see `collector dead retry --help`)")


def test_export_to_a_full_disk_ends_in_one_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", args=["--handler", "tests.support.model:held"],
                           env={"MODEL_GATE_FILE": str(tmp_path / "never"),
                                "MODEL_RECORD_FILE": str(tmp_path / "record")})
    server.start()
    try:
        assert post_events(server.port, [{"n": n} for n in range(300)]).status == 202
        with open("/dev/full", "wb") as full:
            done = subprocess.run(
                [sys.executable, "-m", "collector", "export", "--url", server.url],
                stdout=full, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path,
                timeout=60, check=False)
        assert done.returncode == 1
        assert one_line(done.stderr).startswith("collector: error: writing - failed after ")
        assert one_line(done.stderr).endswith(" jobs: No space left on device")
    finally:
        server.kill()


def test_status_never_takes_a_record_left_by_a_killed_daemon_for_this_one(
    tmp_path: Path
) -> None:
    """daemon.json left by a daemon killed with -9 names a port another daemon may have
    now: while something else holds the data dir, status must not report that one."""
    other = ServerProcess(tmp_path / "other")
    other.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / DAEMON_FILE).write_text(json.dumps({"pid": 1, "urls": [other.url]}))
    try:
        with exclusive_lock(data_dir, LOCK_FILE, what="data dir", holder="a test"):
            done = run_cli("status", "--data-dir", str(data_dir), cwd=tmp_path)
        assert done.returncode == 1, done.stdout  # no queue file here: nothing to report
        assert one_line(done.stderr) == (
            f"collector: error: no queue file in {data_dir} (and no daemon answering)")
        assert other.url not in done.stdout
    finally:
        assert other.terminate() == 0


ARABIC_ONE = "\u0661"  # a digit to str.isdigit(), not to the query API


def test_local_ids_are_read_as_the_api_reads_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    asyncio.run(_empty_stats(data_dir))
    for command, key in (("matches", "9999999999999999999"), ("matches", ARABIC_ONE),
                         ("players", "9999999999999999999"), ("players", ARABIC_ONE)):
        done = run_cli(command, key, "--data-dir", str(data_dir), cwd=tmp_path)
        assert done.returncode == 1, (command, key, done.stdout)
        noun = "match" if command == "matches" else "player"
        assert one_line(done.stderr) == f"collector: error: no {noun} {key!r}"
    cursor = run_cli("matches", "--before", ARABIC_ONE, "--data-dir", str(data_dir), cwd=tmp_path)
    assert one_line(cursor.stderr) == "collector: error: --before: not a cursor: '\u0661'"


async def _empty_stats(data_dir: Path) -> None:
    store = StatsStore(data_dir)
    await store.open()
    await store.close()


def test_a_token_with_a_line_break_or_a_bad_url_is_a_usage_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret\nmore\n")
    done = run_cli("status", "--url", "http://127.0.0.1:9", "--token-file", str(token),
                   cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"collector: error: --token-file: {token}: the token holds a space, a line break or "
        "a control character (one line, no spaces, expected)")
    bad = run_cli("status", "--url", "notaurl", cwd=tmp_path)
    assert bad.returncode == 2
    assert one_line(bad.stderr) == (
        "collector status: error: argument --url: not an http(s) URL with a host: "
        "'notaurl' (like http://127.0.0.1:8765) (see `collector status --help`)")


def test_a_stats_db_that_is_a_folder_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "stats.db").mkdir(parents=True)
    for command in (("sessions",), ("matches",), ("rebuild-stats", "--empty")):
        done = run_cli(*command, "--data-dir", str(data_dir), cwd=tmp_path)
        assert done.returncode == 1, command
        assert one_line(done.stderr).startswith(
            f"collector: error: {data_dir / 'stats.db'} is a folder, not a statistics "
            "database"), command
