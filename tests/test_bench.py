"""scripts/bench.py: the drain arithmetic, and a smoke run of the harness.

The smoke run uses the bench's own load generator (`--no-wrk`), so it needs no wrk and
also covers that fallback. It checks the shape of what is printed and written, never the
numbers: this machine is shared and its figures are noise at this size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench import LoadResult, drain_rates, median_run, time_at

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"


def test_time_at_interpolates_between_samples() -> None:
    samples = [(1.0, 0), (2.0, 100), (4.0, 300)]
    assert time_at(samples, 0) == 1.0
    assert time_at(samples, 50) == pytest.approx(1.5)
    assert time_at(samples, 200) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="never reach"):
        time_at(samples, 301)


def test_drain_rates_compare_the_first_and_last_tenths() -> None:
    # 1,000 jobs: 200/s for the first 500, then 100/s; a sample every 0.1 s.
    samples = [(t / 10, min(1000, 20 * t if t <= 25 else 500 + 10 * (t - 25)))
               for t in range(76)]
    rates = drain_rates(samples, 1000)
    assert rates.seconds == pytest.approx(7.5)
    assert rates.overall == pytest.approx(1000 / 7.5)
    assert rates.first_tenth == pytest.approx(200)
    assert rates.last_tenth == pytest.approx(100)
    assert rates.last_vs_first == pytest.approx(0.5)


def test_drain_rates_refuse_a_tenth_with_too_few_samples() -> None:
    rates = drain_rates([(0.0, 0), (0.1, 500), (0.2, 1000)], 1000)
    assert rates.overall == pytest.approx(5000)
    assert rates.last_vs_first is None


def _run(requests: int, p99_us: float) -> LoadResult:
    return LoadResult(requests=requests, duration_s=10.0, errors={}, latency_us={"p99": p99_us},
                      statuses={})


def test_median_run_takes_the_middle_run_by_the_given_key() -> None:
    slow, middle, fast = _run(30_000, 9_000), _run(50_000, 4_000), _run(90_000, 2_000)
    assert median_run([fast, slow, middle], lambda r: r.per_second) is middle
    assert median_run([slow, fast, middle], lambda r: r.latency_us["p99"]) is middle
    # An even count takes the lower of the two middle runs; one run is its own median.
    assert median_run([fast, slow], lambda r: r.per_second) is slow
    assert median_run([fast], lambda r: r.per_second) is fast


@pytest.mark.slow
def test_quick_single_run_with_the_own_load_generator(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "single", "--no-wrk",
         "--json", str(out_json), "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=100, env=env, cwd=REPO, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "load generator: scripts/loadgen.py" in out
    for line in ("reference, asyncio + json", "collector serve --handler noop",
                 "backlog when the load stopped"):
        assert line in out, out
    for cell in ("| figure", "| collector", "| reference", "| target", "| result",
                 "| single-event POSTs, c32", "| backlog at the end"):
        assert cell in out, out

    data = json.loads(out_json.read_text())
    assert data["quick"] is True, data
    assert not data["errors"], data
    rows = {row["figure"]: row for row in data["rows"]}
    single = rows["single-event POSTs, c32"]
    assert single["collector"] > 0, single
    assert single["reference"] > 0, single
    assert single["ratio"] > 0, single
    assert single["passed"] in (True, False)
    assert rows["backlog at the end of the 2 s run"]["collector"] >= 0
    assert list(tmp_path.glob("collector-bench-*")) == []  # the temporary dir is gone
