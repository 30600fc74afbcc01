"""Bad state at start-up: each one clear line on stderr and a non-zero exit.

A data dir the daemon may not write (permission bits, a read-only file system, a
read-only queue file), a data dir that is a file, a second daemon on the same data dir,
a port in use. test_config_cli covers the basics of the last two; here: what a failed
start leaves behind (nothing locked, nothing half-open, the first daemon unharmed).

Root ignores permission bits, so as root the daemon runs with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped from its bounding set (`setpriv`): it then meets the
permission bits like any other user, which is what these tests need.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.files import LOCK_FILE
from collector.queue import QUEUE_FILE, inspect_file
from tests.support.model import one_line, post_events, run_cli
from tests.support.server import ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]


def serve(data_dir: Path, cwd: Path, *, prefix: tuple[str, ...] = (),
          port: int | None = None) -> subprocess.CompletedProcess[str]:
    """`collector serve` that is expected to fail at start."""
    return run_cli("serve", "--handler", "noop", "--port", str(port or free_port()),
                   "--data-dir", str(data_dir), cwd=cwd, prefix=prefix)


def test_data_dir_without_write_permission(tmp_path: Path, as_a_user: tuple[str, ...]
                                           ) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o555)
    result = serve(data_dir, tmp_path, prefix=as_a_user)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(data_dir) in line
    assert "not writable" in line
    assert list(data_dir.iterdir()) == []


def test_data_dir_that_cannot_be_created(tmp_path: Path, as_a_user: tuple[str, ...]) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    result = serve(parent / "data", tmp_path, prefix=as_a_user)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(parent / "data") in line
    assert "Permission denied" in line


def test_queue_file_that_is_read_only(tmp_path: Path, as_a_user: tuple[str, ...]) -> None:
    """Not damage: the message must not send the operator to `collector recover`."""
    data_dir = tmp_path / "data"
    first = serve_and_stop(data_dir, tmp_path)
    assert first == 0
    (data_dir / QUEUE_FILE).chmod(0o444)
    result = serve(data_dir, tmp_path, prefix=as_a_user)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(data_dir / QUEUE_FILE) in line
    assert "readonly" in line or "read-only" in line or "Permission denied" in line
    assert "recover" not in line


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("I am a file")
    result = serve(not_a_dir, tmp_path)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"collector: error: data dir {not_a_dir} is a file, not a folder")
    assert not_a_dir.read_text() == "I am a file"


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root only; skipped where it cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a read-only tmpfs needs root (euid {os.geteuid()})")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30,
                       check=False)


def test_data_dir_on_a_read_only_file_system(tmp_path: Path, read_only_fs: Path) -> None:
    """Even root cannot write there: no capability trick needed."""
    result = serve(read_only_fs, tmp_path)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"collector: error: data dir {read_only_fs} is on a read-only file system")


def serve_and_stop(data_dir: Path, tmp_path: Path) -> int:
    """Start a daemon, store one event, stop it cleanly; its exit code."""
    server = ServerProcess(data_dir)
    server.start()
    try:
        assert post_events(server.port, {"id": "kept"}).status == 202
    finally:
        code = server.terminate()
    return code


@pytest.mark.slow
def test_second_daemon_is_refused_and_the_first_carries_on(
    server_process: ServerFactory, tmp_path: Path
) -> None:
    first = server_process()
    first.start()
    assert post_events(first.port, {"id": "one"}).status == 202
    before = inspect_file(first.data_dir)

    result = serve(first.data_dir, tmp_path)

    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(first.data_dir / LOCK_FILE) in line
    assert "another collector" in line
    # The refused daemon stopped at the lock: the file is as the first one left it.
    assert inspect_file(first.data_dir).last_seq == before.last_seq
    assert post_events(first.port, {"id": "two"}).status == 202
    assert first.terminate() == 0


@pytest.mark.slow
def test_port_in_use_leaves_the_queue_closed_cleanly_and_unlocked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = serve(data_dir, tmp_path, port=port)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    report = inspect_file(data_dir)
    assert report.exists
    assert not report.problems
    assert report.clean_shutdown  # closed properly on the way out, not left mid-run
    # The lock went with the process: a start on a free port works at once.
    assert serve_and_stop(data_dir, tmp_path) == 0
    assert inspect_file(data_dir).last_seq == 1

