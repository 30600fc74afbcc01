"""`pip install .` (README's first command) installs a working daemon: every file of
collector/dashboard/static is in the wheel (setup.cfg's package_data globs), so a page
never 404s on an installed daemon while the editable checkout the tests use is fine; and
nothing of the optional PostgreSQL mode (asyncpg) is needed to serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from collector.config import POSTGRES_NEEDS_ASYNCPG
from collector.dashboard import STATIC_DIR
from tests.support.paths import REPO
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(300)


def test_the_wheel_carries_every_dashboard_file(tmp_path: Path) -> None:
    # A copy without build/: setuptools would pack what an earlier build left there.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "collector-data"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(wheels), str(source)],
        capture_output=True, text=True, check=False, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("collector-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.startswith("collector/dashboard/")}
    ours = {f"collector/dashboard/static/{p.relative_to(STATIC_DIR).as_posix()}"
            for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert len(ours) >= 15
    assert ours - packed == set()


def _without_asyncpg(tmp_path: Path) -> str:
    """A PYTHONPATH entry whose sitecustomize hides asyncpg, as on a base install
    (README's first command installs no extras)."""
    folder = tmp_path / "no-asyncpg"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['asyncpg'] = None\n")
    return str(folder)


def test_a_base_install_serves_and_the_postgres_mode_says_what_it_needs(tmp_path: Path) -> None:
    """asyncpg is the `postgres` extra: without it the SQLite mode serves and every command
    loads; with a DSN, one line names what to install (not an ImportError's traceback)."""
    hide = _without_asyncpg(tmp_path)
    server = ServerProcess(tmp_path / "data", env={"PYTHONPATH": hide})
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.kill()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["PYTHONPATH"] = os.pathsep.join([hide, str(REPO)])
    probe = subprocess.run([sys.executable, "-c", "import asyncpg"], env=env,
                           capture_output=True, text=True, check=False, timeout=60)
    assert probe.returncode != 0  # the hiding works: this test can fail
    for command in (["--help"], ["migrate", "--help"]):
        shown = subprocess.run([sys.executable, "-m", "collector", *command], env=env,
                               capture_output=True, text=True, check=False, timeout=60)
        assert shown.returncode == 0, shown.stderr
    env["COLLECTOR_POSTGRES_DSN"] = "postgresql://u:secret@127.0.0.1:1/db"
    for command in (["serve", "--data-dir", str(tmp_path / "pg")],
                    ["migrate", "--data-dir", str(tmp_path / "data")]):
        refused = subprocess.run([sys.executable, "-m", "collector", *command], env=env,
                                 capture_output=True, text=True, check=False, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr == f"collector: error: {POSTGRES_NEEDS_ASYNCPG}\n"
