"""scripts/bench.py: the drain arithmetic, and a smoke run of the harness.

The smoke run uses the bench's own load generator (`--no-wrk`), so it needs no wrk and
also covers that fallback. The dashboard figure gets a smoke run of its own (`--quick`: a
60-match history) and a test of its history builder. Both check the shape of what is
printed and written, never the numbers: this machine is shared and its figures are
noise at this size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.bench import (
    BUSY_LOOP,
    DASHBOARD_PAGES,
    FIGURE_FUNCS,
    FIGURES,
    Harness,
    HistoryShape,
    LoadResult,
    Plan,
    Report,
    Row,
    Target,
    build_history,
    drain_rates,
    figure_token,
    median_run,
    median_value,
    parse_args,
    percentile,
    time_at,
    token_timing,
)
from tests.support.paths import REPO

BENCH = REPO / "scripts" / "bench.py"


def quick_bench(tmp_path: Path, only: str, *extra: str, timeout: float) -> tuple[Path, str]:
    """Run `bench.py --quick --only ONLY` (no COLLECTOR_* settings) to a successful end:
    the JSON file it wrote, and what it printed."""
    out_json = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", only, *extra,
         "--json", str(out_json), "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out_json, proc.stdout


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


def test_median_value_skips_the_rounds_that_measured_nothing() -> None:
    assert median_value([0.9, None, 1.2, 0.7]) == 0.9
    assert median_value([1.1, 0.95]) == 0.95  # the lower middle one
    assert median_value([None, None]) is None
    assert median_value([]) is None


def test_the_verdict_never_calls_an_unmeasured_figure_met() -> None:
    at_least_one = Target("min", 1.0, "≥ 1")
    report = Report()
    report.add(Row("measured", "x", 2.0, target=at_least_one))
    report.add(Row("context", "x", None))  # no target: nothing to meet
    assert report.verdict() == ("every target met", True)

    report.add(Row("missed", "x", 0.5, target=at_least_one))
    assert report.verdict() == ("MISSED targets: missed", True)  # measured, so complete

    report.add(Row("too few samples", "x", None, target=at_least_one))
    text, complete = report.verdict()
    assert not complete
    assert "every target met" not in text
    assert text.splitlines() == ["MISSED targets: missed",
                                 "NOT MEASURED (see the lines above): too few samples"]


def test_the_token_figure_measures_both_checks() -> None:
    """`--only token` measures the daemon's check and a plain == in the same run; the
    figures are the bench's to report, not this test's to judge."""
    ours, plain = token_timing(rounds=4)
    assert ours > 0, ours  # a ratio of two medians of measured times
    assert plain > 0, plain
    assert "token" in FIGURES
    assert FIGURE_FUNCS["token"] is figure_token
    assert parse_args(["--only", "token"]).only == ["token"]


def test_busy_takes_a_small_count_and_refuses_anything_else() -> None:
    assert parse_args([]).busy == 0
    assert parse_args(["--busy", "2"]).busy == 2
    for bad in ("-1", "65", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--busy", bad])


def _busy_loops() -> set[int]:
    """Pids of the processes running the bench's --busy loop."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-c", BUSY_LOOP.encode()]:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_harness_runs_the_busy_processes_until_it_closes(tmp_path: Path) -> None:
    before = _busy_loops()
    harness = Harness(Plan.make(quick=True), use_wrk=False, work_dir=tmp_path, keep=False,
                      busy=2)
    try:
        started = _busy_loops() - before
        assert len(started) == 2
    finally:
        harness.close()
    assert not _busy_loops() & started  # killed and reaped, not left spinning
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_single_run_with_the_own_load_generator(tmp_path: Path) -> None:
    out_json, out = quick_bench(tmp_path, "single", "--no-wrk", "--busy", "1", timeout=100)
    assert "load generator: scripts/loadgen.py" in out
    assert "busy machine: 1 process(es) spinning" in out
    for line in ("reference, asyncio + json", "collector serve --handler noop",
                 "backlog when the load stopped"):
        assert line in out, out
    for cell in ("| figure", "| collector", "| reference", "| target", "| result",
                 "| single-event POSTs, c32", "| backlog at the end"):
        assert cell in out, out

    data = json.loads(out_json.read_text())
    assert data["quick"] is True, data
    assert data["busy_processes"] == 1, data
    assert not data["errors"], data
    rows = {row["figure"]: row for row in data["rows"]}
    single = rows["single-event POSTs, c32"]
    assert single["collector"] > 0, single
    assert single["reference"] > 0, single
    assert single["ratio"] > 0, single
    # Each figure is the median run's rate, and the verdict follows from the row itself.
    median = data["details"]["single"]
    col, ref = (_per_second(median[name]) for name in ("collector", "reference"))
    assert (single["collector"], single["reference"]) == (col, ref), (single, median)
    assert single["ratio"] == col / ref, single
    assert single["target"] == "≥ 0.75x reference", single
    assert single["passed"] is (single["ratio"] >= 0.75), single
    backlog = rows["backlog at the end of the 2 s run"]
    jobs = median["backlog_at_end_max"]
    assert isinstance(jobs, int), median
    assert jobs >= median["backlog_at_end"], median  # the worst round's
    assert backlog["collector"] == jobs / col, (backlog, median)  # in seconds of intake
    assert (backlog["reference"], backlog["ratio"], backlog["target"]) == (
        None, None, "< 1 s of intake"), backlog
    assert backlog["passed"] is (backlog["collector"] <= 1.0), backlog
    assert list(tmp_path.glob("collector-bench-*")) == []  # the temporary dir is gone


def _per_second(run: dict[str, Any]) -> float:
    """A LoadResult's rate from its JSON form: requests answered without an error status
    over the run's duration."""
    ok: int = run["requests"] - run["errors"].get("status", 0)
    duration: float = run["duration_s"]
    return ok / duration


def test_the_pipeline_figure_replays_the_recording_as_matches_of_their_own() -> None:
    """Each copy of the recording has a MatchGuid of its own and otherwise the same bytes,
    so the stats handler opens a match per copy, as hundreds of players would."""
    from scripts.bench import CAPTURE, figure_pipeline, recording_copies

    lines = [line.strip() for line in CAPTURE.read_bytes().splitlines() if line.strip()]
    copies = recording_copies(CAPTURE, 3)
    assert len(copies) == 3 * len(lines)
    guids = [{json.loads(json.loads(m)["Data"])["MatchGuid"] for m in copies[k::len(lines)]
              if b"MatchGuid" in m} for k in range(len(lines))]
    assert all(len(found) == 3 for found in guids if found)  # three matches, one per copy
    assert copies[:len(lines)] == lines  # copy 0 is the recording itself, byte for byte
    assert FIGURE_FUNCS["pipeline"] is figure_pipeline


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 95) == 7.0


def test_the_dashboard_history_is_built_through_the_stats_store(tmp_path: Path) -> None:
    """Two sittings of six players, three matches each: every match ended with a winner,
    every line has its derived statistics, and each player of a sitting has one session
    from it (the sittings are hours apart, the matches a minute or two)."""
    shape = HistoryShape(matches=6, players=9, sittings=2)
    built = build_history(tmp_path / "data", shape, tmp_path / "build.log")
    assert (built["matches"], built["ended"], built["lines"]) == (6, 6, 36), built
    assert built["lines_without_stats"] == 0, built
    assert built["sessions"] == 12, built
    assert built["goals"] > 0, built
    assert built["warnings"] == [], built
    assert built["newest_match"] == 6, built
    assert built["busiest_player_matches"] in (3, 6), built
    assert set(built["outcomes"]) <= {"applied", "unchanged"}, built
    again = build_history(tmp_path / "again", shape, tmp_path / "again.log")
    assert {k: again[k] for k in ("events", "goals", "busiest_player")} == {
        k: built[k] for k in ("events", "goals", "busiest_player")}  # seeded: the same


@pytest.mark.slow
def test_quick_dashboard_run(tmp_path: Path) -> None:
    """`--quick --only dashboard`: a small history, a real daemon on it, every call of
    every page timed and weighed, with /healthz beside them. The shape, not the numbers."""
    out_json, out = quick_bench(tmp_path, "dashboard", timeout=100)
    for line in ("== dashboard: a history of 60 matches", "reference GET /healthz",
                 "GET /v1/sessions?limit=8", "GET /metrics", "slowest call: GET /v1/",
                 "| dashboard home page: its 3 call(s) at once, p50",
                 "| dashboard page weight, heaviest"):
        assert line in out, out
    assert "match_opened" not in out  # the store's log lines stay out of the report

    data = json.loads(out_json.read_text())
    assert not data["errors"], data
    details = data["details"]["dashboard"]
    assert details["history"]["matches"] == 60, details["history"]
    assert details["history"]["lines_without_stats"] == 0, details["history"]
    assert details["reference"]["call"] == "/healthz", details["reference"]
    assert details["reference"]["p50_ms"] > 0, details["reference"]
    assert set(details["pages"]) == set(DASHBOARD_PAGES)
    for page, one in details["pages"].items():
        assert len(one["calls"]) == len(DASHBOARD_PAGES[page][1]), one
        for call, figures in one["calls"].items():
            assert "{" not in call, call  # the ids were filled in
            assert 0 < figures["p50_ms"] <= figures["p95_ms"], (call, figures)
            assert figures["bytes"] > 0, (call, figures)
        assert one["load_p50_ms"] > 0, one
        files = one["files"]
        assert f"/static/js/pages/{page}.js" in files, files
        assert "/static/vendor/chart.js/chart.umd.min.js" in files, files
        assert "/static/app.css" in files, files
        assert one["weight_bytes"] == one["shell_bytes"] + sum(files.values()), one
    rows = {row["figure"]: row for row in data["rows"]}
    home = rows["dashboard home page: its 3 call(s) at once, p50"]
    assert home["collector"] > 0, home
    assert home["reference"] > 0, home
    assert home["target"] is None, home  # context: the bench judges no latency here
    assert FIGURE_FUNCS["dashboard"].__name__ == "figure_dashboard"
    assert list(tmp_path.glob("collector-bench-*")) == []


def test_the_postgres_figure_is_selectable_and_takes_a_dsn() -> None:
    assert "postgres" in FIGURES
    assert FIGURE_FUNCS["postgres"].__name__ == "figure_postgres"
    args = parse_args(["--only", "postgres", "--postgres", "postgresql://u@db:5432/scratch"])
    assert (args.only, args.postgres) == (["postgres"], "postgresql://u@db:5432/scratch")
    assert parse_args([]).postgres is None  # the bench starts a private cluster then


def test_two_load_generators_combine_into_one_result() -> None:
    """Two nodes' loads as one: answers summed over the longer run, each percentile the
    higher of the two (percentiles cannot be merged exactly)."""
    from scripts.bench import combine_loads

    a = LoadResult(requests=1_000, duration_s=10.0, errors={"status": 10, "timeout": 0},
                   latency_us={"p50": 900.0, "p99": 5_000.0}, statuses={}, loader_cpu_s=1.0)
    b = LoadResult(requests=500, duration_s=10.2, errors={"status": 0, "timeout": 1},
                   latency_us={"p50": 1_100.0, "p99": 4_000.0}, statuses={}, loader_cpu_s=0.5)
    both = combine_loads([a, b])
    assert (both.requests, both.duration_s, both.ok) == (1_500, 10.2, 1_490)
    assert both.errors == {"status": 10, "timeout": 1}
    assert both.latency_us == {"p50": 1_100.0, "p99": 5_000.0}
    assert both.loader_cpu_s == 1.5
    assert combine_loads([a]) is a


def test_a_vetoed_row_fails_whatever_its_value() -> None:
    floor = Target("min", 50_000, "≥ 50,000 events/s, none lost")
    assert Row("fast", "events/s", 90_000.0, target=floor).passed is True
    lossy = Row("fast but lossy", "events/s", 90_000.0, target=floor, veto="events lost")
    assert lossy.passed is False
    assert lossy.as_json()["veto"] == "events lost"
    report = Report()
    report.add(lossy)
    assert report.verdict() == ("MISSED targets: fast but lossy", True)


@pytest.mark.slow
def test_quick_postgres_run(tmp_path: Path) -> None:
    """`--quick --only postgres`: one round of each setup (one SQLite node, one and two
    PostgreSQL nodes on a private cluster the bench starts), with its fields printed and
    written, and every acknowledged event applied. The shape, not the numbers."""
    from tests.support.postgres import missing_reason

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    out_json, out = quick_bench(tmp_path, "postgres", timeout=110)
    for line in ("== postgres: POSTs of 100-event arrays", "PostgreSQL: a private cluster",
                 "fsync=on", "1 SQLite-mode node", "1 PostgreSQL-mode node",
                 "2 PostgreSQL-mode nodes", "every acknowledged event applied: yes",
                 "group commits: node 1:", "node 2:", "median runs:"):
        assert line in out, out
    for cell in ("| postgres: 100-event arrays, 2 PostgreSQL-mode nodes, 2x c16",
                 "| postgres: p99 latency, 2 PostgreSQL-mode nodes",
                 "| postgres: acknowledged events not applied, every run",
                 "| ≥ 50,000 events/s, none lost"):
        assert cell in out, out

    data = json.loads(out_json.read_text())
    assert not data["errors"], data
    rows = {row["figure"]: row for row in data["rows"]}
    two = rows["postgres: 100-event arrays, 2 PostgreSQL-mode nodes, 2x c16"]
    assert two["collector"] > 0, two
    assert two["reference_label"] == "1 SQLite node", two
    assert two["passed"] is (two["collector"] >= 50_000 and two["veto"] is None), two
    lost = rows["postgres: acknowledged events not applied, every run"]
    assert (lost["collector"], lost["passed"]) == (0, True), lost
    details = data["details"]["postgres"]
    assert set(details["median"]) == {"sqlite", "pg1", "pg2"}, details
    for key, run in details["median"].items():
        assert run["all_applied"] is True, (key, run)
        assert run["answered_events"] > 0, (key, run)
        assert len(run["per_node"]) == (2 if key == "pg2" else 1), (key, run)
        assert len(run["commits"]) == len(run["per_node"]), (key, run)
    assert list(tmp_path.glob("collector-bench-*")) == []
