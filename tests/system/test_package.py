"""`pip install .` (README's first command) installs a working dashboard: every file of
collector/dashboard/static is in the wheel (setup.cfg's package_data globs), so a page
never 404s on an installed daemon while the editable checkout the tests use is fine."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from collector.dashboard import STATIC_DIR
from tests.support.paths import REPO

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
