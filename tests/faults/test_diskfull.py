"""Disk full: 507 insufficient_storage, nothing acknowledged that was not stored, reads and
health still served, and recovery without a restart once space returns.

Two ways to run out of space, both against a real `collector serve`:

* a size-limited file system under the data dir (a tmpfs, and an ext4 image on a loop
  device), filled up with a filler file; space returns when the filler is deleted;
* `queue.max_bytes` (SQLite's max_page_count); space returns when the worker drains.

The worker is held (tests.support.model:held) while the queue fills, so what is stored is
exactly what was answered 202; then it is let go and must handle every one of them,
in order, and none of the refused events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.diskfull import (
    Intake,
    ServerFactory,
    check_handled_exactly_the_acknowledged,
    fill,
    start_held,
)
from tests.support.model import (
    Answer,
    request,
    wait_until,
)

pytestmark = pytest.mark.slow

FS_SIZE_MB = 16  # ext4 needs room for its journal; tmpfs gets the same for symmetry


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A file system of FS_SIZE_MB MiB mounted on tmp_path/mnt (skipped where it cannot be)."""
    kind: str = request.param
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} needs root (euid {os.geteuid()}); "
                    "the queue.max_bytes variant covers disk full without it")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE_MB}m", "tmpfs", str(mnt)]
    else:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
        image = tmp_path / "fs.img"
        with image.open("wb") as fh:
            fh.truncate(FS_SIZE_MB << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        cmd = ["mount", "-o", "loop", str(image), str(mnt)]
    mounted = _run(*cmd)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({' '.join(cmd)}): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))








def check_refusal(answer: Answer) -> None:
    """The 507 in the contract's shape."""
    assert answer.status == 507
    assert answer.body["error"] == "insufficient_storage", answer.body
    assert answer.body["detail"] == "the disk is full; nothing was stored", answer.body
    assert answer.headers.get("content-type", "").startswith("application/json")
    assert answer.headers["retry-after"] == "30"  # the API's fixed hint for a full disk


def check_still_serving(port: int, intake: Intake) -> None:
    """Health and reads answer while writes cannot; the numbers are the 202s' exactly."""
    health = request(port, "GET", "/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"}), health
    queue = request(port, "GET", "/v1/queue")
    assert queue.status == 200, queue
    assert queue.body["pending"] + queue.body["in_flight"] == len(intake.acknowledged)
    assert queue.body["last_seq"] == max(intake.acknowledged.values())
    # A full disk does not make the daemon unready (api.not_ready_reason: stopping,
    # starting, queue closed, worker stopped): it still serves reads, and each POST finds
    # out for itself whether there is room again.
    ready = request(port, "GET", "/readyz")
    assert (ready.status, ready.body) == (200, {"status": "ready"}), ready




def test_full_file_system_answers_507_and_recovers_when_space_returns(
    server_process: ServerFactory, small_fs: Path, tmp_path: Path
) -> None:
    server, reader, gate = start_held(server_process, tmp_path, small_fs / "data")
    intake = Intake()
    assert intake.post(server.port, 5).status == 202
    filler = small_fs / "filler"
    fill(filler)

    refused, refused_key = intake.until_507(server.port, count=20)
    check_refusal(refused)
    for _ in range(3):  # still full: still refused, and the server goes on answering
        assert intake.post(server.port, 20).status == 507
    check_still_serving(server.port, intake)

    filler.unlink()  # space returns; no restart
    after = intake.post(server.port, 20, key="fill-again")
    assert after.status == 202, after
    assert "idempotent-replayed" not in after.headers
    # The key of a refused request was not kept: the same key now stores its events.
    retried = intake.post(server.port, 3, key=refused_key)
    assert retried.status == 202, retried
    assert "idempotent-replayed" not in retried.headers

    gate.touch()
    check_handled_exactly_the_acknowledged(reader, intake)
    assert server.terminate() == 0, server.output()[-3000:]


def test_max_bytes_cap_answers_507_and_recovers_as_the_worker_drains(
    server_process: ServerFactory, tmp_path: Path, data_dir: Path
) -> None:
    server, reader, gate = start_held(server_process, tmp_path, data_dir,
                                      COLLECTOR_QUEUE_MAX_BYTES=str(1 << 20))
    intake = Intake()
    refused, _ = intake.until_507(server.port, count=20)
    check_refusal(refused)
    assert len(intake.acknowledged) > 100  # the cap, not something else, stopped it
    assert intake.post(server.port, 20).status == 507
    check_still_serving(server.port, intake)

    gate.touch()  # the worker drains; acknowledged rows free their pages
    for n in range(5):  # room comes back as the worker goes: full-size requests fit again
        wait_until(lambda: intake.post(server.port, 20).status == 202,
                   f"a 202 for full-size request {n + 1} of 5 as the worker drains",
                   timeout=60)
    check_handled_exactly_the_acknowledged(reader, intake)
    assert server.terminate() == 0, server.output()[-3000:]
    assert (data_dir / "queue.db").stat().st_size <= 1 << 20

