"""Model-based test of a real server: random enqueues, handler verdicts, dead letters,
kill -9 and clean restarts, checked against a plain model after every step.

The pattern of Vector's disk-buffer test: the real thing and a model that fits in a few
lists run side by side, and must agree at every step. The real thing is a `collector
serve` subprocess whose handler (tests.support.model:gated) asks the test for the verdict
on every call, so the model knows exactly which job is in flight.

What the model holds, and what is checked:

* `line`: the jobs not yet finished, in seq order. Every handler call must be for
  `line[0]` with the attempt number the model expects (order, retries at the head).
* `acked`: jobs whose handler returned, in that order, whose acknowledgement may not be
  on disk yet. Acknowledgements are group-committed (`queue.ack_interval_ms`), so a kill
  may leave a run of them in the file: that run must be a suffix of `acked` (the replay
  is contiguous and starts at the oldest unacknowledged job), and nothing outside
  `acked`, `line` and a dead letter still being written may be there. After the restart
  the handler must see exactly the file's rows, in order.
* With `ack_interval_ms = 0` an acknowledgement is committed before any later request's
  202 (they share the committer), so `acked` is emptied by every 202: a replay is then
  only the job in flight, and the jobs acknowledged since the last request.
* Dead letters, `processed_total`, `last_seq`, Idempotency-Key replays (across restarts
  too), and the queue numbers of GET /v1/queue after every step.
* At the end: every event that got a 202 was handled to success or is a dead letter.

How the random programs explore: one rule, `step`, draws the next action from a weighted
list that depends on the state (handler verdicts are common, enqueues stop once
MAX_BACKLOG jobs wait, restarts stop after MAX_RESTARTS), because Hypothesis' swarm
testing over separate rules turned many programs into 25 enqueues in a row. A kill
comes at a step boundary (`restart`) or right after a handler verdict, before its
acknowledgement, failed attempt or dead letter is known to be committed (`kill_after`).
Each class run prints what it reached (`model reach (...)`: kills, clean restarts,
redeliveries of acknowledged jobs, retries, dead letters) in the terminal summary, and
fails if a class that can redeliver acknowledged jobs at random never did.
COLLECTOR_MODEL_MINUTES=10 turns the examples up until the file takes about that long.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.support.model import (
    CONTROL_ENV,
    RECORD_ENV,
    QueueFileState,
    RecordReader,
    append_line,
    post_events,
    read_queue_file,
    request,
    wait_until,
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 3
MAX_RESTARTS = 5  # per random example: each restart costs a server start (~0.3-1 s)
MAX_BACKLOG = 8  # a random program enqueues only while fewer jobs than this wait

#: The arguments of each action a random step can take.
_ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "enqueue": st.fixed_dictionaries({
        "count": st.integers(1, 4), "as_array": st.booleans(),
        "key": st.sampled_from(["none", "none", "new", "again"])}),
    "process": st.just({}),
    "handler_fails": st.just({}),
    "dead_letter": st.just({}),
    "restart": st.fixed_dictionaries({"how": st.sampled_from(["kill", "kill", "term"])}),
    "kill_after": st.fixed_dictionaries({"verdict": st.sampled_from(["ok", "ok", "fail", "perm"])}),
}


@dataclass
class MJob:
    """A job as the model knows it."""

    seq: int
    eid: str
    attempt: int = 1  # the attempt number the next handler call carries
    attempts_on_disk_min: int = 0  # failures known to be recorded in the file


@dataclass
class Model:
    """The plain model of the queue."""

    jobs: dict[int, MJob] = field(default_factory=dict)
    line: list[int] = field(default_factory=list)  # unfinished, in seq order
    acked: list[int] = field(default_factory=list)  # ack maybe not durable, in ack order
    dead: set[int] = field(default_factory=set)
    dead_unsure: int | None = None  # a dead letter whose commit is not yet confirmed
    processed_durable: int = 0  # acknowledgements known to be committed
    processed_base: int = 0  # processed_total when the running process started
    acks_here: int = 0  # acknowledgements made by the running process
    next_seq: int = 1
    keys: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # event id -> seq, every 202
    succeeded: set[str] = field(default_factory=set)  # event ids a handler returned for


@dataclass
class Reach:
    """What the random programs of one class run reached (printed, and checked)."""

    examples: int = 0
    examples_with_kill: int = 0
    examples_with_redelivery: int = 0
    steps: int = 0
    kills: int = 0
    kills_after_verdict: int = 0  # of `kills`: right after a handler verdict
    clean_restarts: int = 0
    acked_back: int = 0  # acknowledged jobs a kill left in the file
    redeliveries: int = 0  # of those: handed to the handler again
    in_flight_back: int = 0  # jobs whose handler was waiting at the kill
    retries: int = 0  # handler failures that put the job back at the head
    dead_letters: int = 0
    dead_back: int = 0  # dead letters whose commit a kill beat: back in line

    def add(self, other: Reach) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self, name: str) -> str:
        return (f"model reach ({name}): {self.examples} examples "
                f"({self.examples_with_kill} with a kill, {self.examples_with_redelivery} "
                f"with a redelivery), {self.steps} steps, {self.kills} kills "
                f"({self.kills_after_verdict} right after a verdict), "
                f"{self.clean_restarts} clean restarts, {self.redeliveries} redeliveries "
                f"({self.acked_back} acknowledged jobs back), {self.in_flight_back} in-flight "
                f"jobs back, {self.retries} retries, {self.dead_letters} dead letters "
                f"({self.dead_back} back after a kill)")


#: The tally the random programs add to; None outside a random class run (named cases).
_reach: Reach | None = None


def _note(text: str) -> None:
    """A Hypothesis event (see --hypothesis-show-statistics), outside a test a no-op."""
    if currently_in_test_context():
        event(text)


def _step(method: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine broken when a step fails, so that teardown skips the final drain."""

    @functools.wraps(method)
    def wrapper(self: QueueMachine, *args: Any, **kwargs: Any) -> None:
        with self._marking_failure():
            method(self, *args, **kwargs)

    return wrapper


class QueueMachine(RuleBasedStateMachine):
    """Drives a real server and the model with the same steps."""

    ack_interval_ms = 50
    #: Whether a random run must redeliver an acknowledged job (see the classes).
    must_redeliver = True

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="collector-model-"))
        self.data_dir = self.tmp / "data"
        self.record = self.tmp / "record.log"
        self.control = self.tmp / "control"
        self.reader = RecordReader(self.record)
        self.model = Model()
        self.awaiting: tuple[str, int] | None = None  # (call, seq) the handler waits on
        self.restarts = 0
        self.events = 0
        self.broken = False
        self.reach = Reach(examples=1)  # this example's; added to _reach at teardown
        self.redelivery_due: set[int] = set()  # acknowledged jobs a kill brought back
        self.server = self._start()

    # -- the server ----------------------------------------------------------------------

    def _start(self) -> ServerProcess:
        server = ServerProcess(self.data_dir, args=["--handler", "tests.support.model:gated"],
                               env={
                                   RECORD_ENV: str(self.record),
                                   CONTROL_ENV: str(self.control),
                                   "COLLECTOR_QUEUE_ACK_INTERVAL_MS": str(self.ack_interval_ms),
                                   "COLLECTOR_WORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                                   "COLLECTOR_WORKER_BACKOFF_BASE": "0.01",
                                   "COLLECTOR_WORKER_BACKOFF_CAP": "0.01",
                                   "COLLECTOR_SERVER_SHUTDOWN_TIMEOUT": "0.2",
                                   "COLLECTOR_LOG_LEVEL": "warning",
                               })
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            server.start()
        except BaseException:
            server.kill()  # a start that failed or was interrupted leaves no process behind
            raise
        return server

    @property
    def port(self) -> int:
        return self.server.port

    # -- steps ---------------------------------------------------------------------------

    @initialize(count=st.integers(1, 6))
    @_step
    def first_events(self, count: int) -> None:
        """Start with work in the line."""
        self.enqueue(count=count, as_array=True, key="none")

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One action, drawn with weights from those that make sense now; printed as
        `(name, arguments)`, the form of a named case's step."""
        name, arguments = data.draw(self._actions(), label="action")
        self.reach.steps += 1
        getattr(self, name)(**arguments)

    def _actions(self) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
        m = self.model
        names: list[str] = []
        if m.line:  # first: the simplest program handles jobs
            names += ["process"] * 6 + ["handler_fails"] * 2 + ["dead_letter"]
        if len(m.line) < MAX_BACKLOG:
            names += ["enqueue"] * 3
        if self.restarts < MAX_RESTARTS:
            names += ["restart"] * 2 + (["kill_after"] if m.line else [])
        return st.sampled_from(names).flatmap(
            lambda name: st.tuples(st.just(name), _ARGUMENTS[name]))

    @_step
    def enqueue(self, count: int, as_array: bool, key: str) -> None:
        """POST one event or a batch, with or without an Idempotency-Key."""
        m = self.model
        headers: dict[str, str] = {}
        if key == "again" and m.keys:
            name = sorted(m.keys)[self.events % len(m.keys)]
            headers["Idempotency-Key"] = name
            known = m.keys[name]
            count = known[0]
        elif key != "none":
            name = f"key-{self.events}"
            headers["Idempotency-Key"] = name
            known = None
        else:
            known = None
        events: list[dict[str, Any]] = [
            {"id": f"e{self.events}.{k}", "Event": "UpdateState", "Data": {"k": k}}
            for k in range(count)]
        self.events += 1
        body: Any = events[0] if count == 1 and not as_array else events
        answer = post_events(self.port, body, headers)
        assert answer.status == 202, answer
        got = (answer.body["accepted"], answer.body["first_seq"], answer.body["last_seq"])
        if known is not None:
            assert got == known, f"a repeated Idempotency-Key answered {got}, first {known}"
            assert answer.headers.get("idempotent-replayed") == "true"
        else:
            assert got == (count, m.next_seq, m.next_seq + count - 1), (got, m.next_seq)
            for k, event in enumerate(events):
                seq = m.next_seq + k
                m.jobs[seq] = MJob(seq=seq, eid=event["id"])
                m.line.append(seq)
                m.accepted[event["id"]] = seq
            m.next_seq += count
            if "Idempotency-Key" in headers:
                m.keys[headers["Idempotency-Key"]] = got
        if self.ack_interval_ms == 0:
            # The committer wrote every acknowledgement made before this request with
            # or before the request's own transaction.
            self._acks_durable()

    @_step
    def process(self) -> None:
        """The handler call on the head job returns: the job is done."""
        self._handle("ok")

    @_step
    def handler_fails(self) -> None:
        """The handler call on the head job raises: retried at the head, or dead-lettered
        once it reached worker.max_attempts."""
        self._handle("fail")

    @_step
    def dead_letter(self) -> None:
        """The handler raises PermanentError: dead-lettered at once, the line moves on."""
        self._handle("perm")

    def _handle(self, verdict: str) -> None:
        """Let the handler call on the head job succeed, fail or give up."""
        m = self.model
        if not m.line:
            return  # nothing to handle (a precondition would make Hypothesis retry draws)
        head = m.jobs[m.line[0]]
        call = self._next_call(head)
        append_line(self.control, f"{call} {verdict}")
        end = self.reader.next(f"the end of call {call}")
        assert (end.kind, end.call, end.seq, end.rest) == ("end", call, head.seq, (verdict,))
        self.awaiting = None
        if verdict == "ok":
            m.line.pop(0)
            m.acked.append(head.seq)
            m.acks_here += 1
            m.succeeded.add(head.eid)
        elif verdict == "perm" or head.attempt >= MAX_ATTEMPTS:
            m.line.pop(0)
            m.dead.add(head.seq)
            m.dead_unsure = head.seq
            self.reach.dead_letters += 1
        else:
            head.attempt += 1
            self.reach.retries += 1

    @_step
    def restart(self, how: str) -> None:
        """SIGKILL (or SIGTERM) the server at this point, check what the file kept against
        the model, start again.

        After a kill the file may keep a run of acknowledged jobs (their group was not yet
        committed). A clean stop commits every acknowledgement, so it keeps only the job
        whose handler was still waiting (cancelled after the grace period).
        """
        self._stop_and_start(how)

    @_step
    def kill_after(self, verdict: str) -> None:
        """The handler call on the head job ends with `verdict` and the server is killed
        at once: its acknowledgement, failed attempt or dead letter may not be committed
        (with ack_interval_ms = 0 too), and the worker may have begun the next call."""
        self._handle(verdict)
        self.reach.kills_after_verdict += 1
        self._stop_and_start("kill")

    def _stop_and_start(self, how: str) -> None:
        self.restarts += 1
        if how == "kill":
            self.server.kill()
            self.reach.kills += 1
        else:
            try:
                code = self.server.terminate()
            except subprocess.TimeoutExpired:
                self.server.kill()
                raise AssertionError("a clean stop did not end within 30 s; the server said:\n"
                                     + self.server.output()[-2000:]) from None
            assert code == 0, self.server.output()[-2000:]
            self.reach.clean_restarts += 1
        self.reader.drop_unread()  # a call that was waiting for its verdict is gone
        self.awaiting = None
        state = read_queue_file(self.data_dir)
        assert state.clean_shutdown == (how == "term")
        self._resolve_after_stop(state, clean=how == "term")
        self.server = self._start()

    # -- checks --------------------------------------------------------------------------

    def _next_call(self, head: MJob) -> str:
        """The handler call now waiting: it must be for the head job, attempt as expected."""
        if self.awaiting is None:
            start = self.reader.next(f"a handler call for seq {head.seq}")
            assert start.kind == "start", start
            self.awaiting = (start.call, start.seq)
            assert start.seq == head.seq, (
                f"handler got seq {start.seq}, the head of the line is {head.seq}")
            assert start.rest == (str(head.attempt), head.eid), (start, head)
            if start.seq in self.redelivery_due:
                self.redelivery_due.discard(start.seq)
                self.reach.redeliveries += 1
            # This call began after the previous attempt's failure was recorded.
            head.attempts_on_disk_min = head.attempt - 1
            if self.model.dead_unsure is not None:
                self._dead_durable()  # the worker moved on: the dead letter is committed
        return self.awaiting[0]

    def _acks_durable(self) -> None:
        m = self.model
        m.processed_durable += len(m.acked)
        m.acked.clear()

    def _dead_durable(self) -> None:
        self._acks_durable()  # the dead letter's transaction carried them
        self.model.dead_unsure = None

    def _resolve_after_stop(self, state: QueueFileState, *, clean: bool) -> None:
        """Check the file a stop left against the model, then adopt it as the new state."""
        m = self.model
        rows = state.rows
        assert state.last_seq == m.next_seq - 1, (state.last_seq, m.next_seq)
        missing = [s for s in m.line if s not in rows]
        assert not missing, f"unfinished jobs lost: {missing}"
        for seq in rows:
            assert m.jobs[seq].eid == state.payload_ids[seq], f"seq {seq} changed its event"
        extra = sorted(s for s in rows if s not in m.line)
        # The only jobs allowed back: the newest acknowledgements (a suffix of them, in
        # order) and a dead letter whose transaction did not commit.
        candidates = [*m.acked, *([m.dead_unsure] if m.dead_unsure is not None else [])]
        suffix = candidates[len(candidates) - len(extra):] if extra else []
        assert extra == suffix, (
            f"jobs back after the stop: {extra}; allowed: a suffix of {candidates}")
        if clean:
            assert not extra, f"a clean stop left acknowledged jobs behind: {extra}"
        dead_back = m.dead_unsure if m.dead_unsure in extra else None
        expected_dead = m.dead - ({dead_back} if dead_back is not None else set())
        assert state.dead == expected_dead, (sorted(state.dead), sorted(expected_dead))
        acked_back = [s for s in extra if s != dead_back]
        _note(f"{'clean stop' if clean else 'kill'}: {len(acked_back)} acknowledged "
              f"job(s) back, in flight {'yes' if m.line else 'no'}")
        self.redelivery_due.update(acked_back)
        self.reach.acked_back += len(acked_back)
        self.reach.dead_back += dead_back is not None
        self.reach.in_flight_back += bool(m.line)
        m.processed_durable += len(m.acked) - len(acked_back)
        assert state.processed_total == m.processed_durable, (
            state.processed_total, m.processed_durable)
        for seq in rows:
            job = m.jobs[seq]
            failures = job.attempt - 1 if seq in m.line else MAX_ATTEMPTS
            assert job.attempts_on_disk_min <= rows[seq] <= failures, (
                f"seq {seq}: {rows[seq]} failed attempts on disk, "
                f"expected {job.attempts_on_disk_min}..{failures}")
            job.attempt = rows[seq] + 1
            job.attempts_on_disk_min = rows[seq]
        # The file is the new truth.
        m.line = sorted(rows)
        m.dead = set(state.dead)
        m.acked = []
        m.dead_unsure = None
        m.processed_base = state.processed_total
        m.acks_here = 0

    def _queue_numbers(self) -> dict[str, Any]:
        answer = request(self.port, "GET", "/v1/queue")
        assert answer.status == 200, answer
        numbers: dict[str, Any] = answer.body
        return numbers

    def _expected_numbers(self) -> dict[str, int]:
        m = self.model
        return {"unfinished": len(m.line), "dead": len(m.dead),
                "last_seq": m.next_seq - 1, "processed_total": m.processed_base + m.acks_here}

    def check_queue_numbers(self) -> None:
        """GET /v1/queue agrees with the model (after the step's effects have landed)."""
        expected = self._expected_numbers()
        seen: dict[str, int] = {}

        def agrees() -> bool:
            q = self._queue_numbers()
            seen.clear()
            seen.update(unfinished=q["pending"] + q["in_flight"], dead=q["dead"],
                        last_seq=q["last_seq"], processed_total=q["processed_total"])
            return seen == expected

        try:
            wait_until(agrees, "queue numbers match the model", timeout=15)
        except AssertionError:
            raise AssertionError(f"/v1/queue says {seen}, the model {expected}") from None
        if self.model.dead_unsure is not None:
            self._dead_durable()  # the dead count moves only once the bury committed
        assert request(self.port, "GET", "/healthz").status == 200

    def check_record(self) -> None:
        """No handler call the model does not expect: at most the head job's."""
        for line in self.reader.unread():
            m = self.model
            ok = line.kind == "start" and bool(m.line) and line.seq == m.line[0]
            assert ok, f"unexpected handler activity {line}; the line is {m.line[:5]}"

    @invariant()
    def agrees_with_the_model(self) -> None:
        """After every step: the queue numbers and the handler's activity."""
        with self._marking_failure():
            self.check_queue_numbers()
            self.check_record()

    @contextlib.contextmanager
    def _marking_failure(self) -> Iterator[None]:
        """A failure skips the final drain in teardown (it would only fail again)."""
        try:
            yield
        except BaseException as exc:
            if not self.broken:  # say once what the server was doing (teardown removes its log)
                proc = self.server.proc
                code = None if proc is None else proc.poll()
                exc.add_note(f"server on port {self.port}: "
                             f"{'running' if code is None else f'exited with {code}'}; "
                             f"its log ends:\n{self.server.output()[-1500:]}")
            self.broken = True
            raise

    def teardown(self) -> None:
        try:
            if not self.broken:
                self._drain_and_verify()
        finally:
            self.server.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)
            reach = self.reach
            reach.examples_with_kill = int(reach.kills > 0)
            reach.examples_with_redelivery = int(reach.redeliveries > 0)
            if _reach is not None:
                _reach.add(reach)

    def _drain_and_verify(self) -> None:
        """Let every remaining job succeed, then check nothing accepted went missing."""
        m = self.model
        while m.line:
            head = m.jobs[m.line[0]]
            call = self._next_call(head)
            append_line(self.control, f"{call} ok")
            end = self.reader.next(f"the end of call {call}")
            assert (end.call, end.seq) == (call, head.seq)
            self.awaiting = None
            m.line.pop(0)
            m.acked.append(head.seq)
            m.acks_here += 1
            m.succeeded.add(head.eid)
        self.check_queue_numbers()
        code = self.server.terminate()
        assert code == 0, self.server.output()[-2000:]
        state = read_queue_file(self.data_dir)
        assert state.rows == {}, state.rows
        dead_ids = {m.jobs[s].eid for s in m.dead}
        lost = [eid for eid in m.accepted if eid not in m.succeeded and eid not in dead_ids]
        assert not lost, f"accepted events never handled: {lost[:10]}"
        assert state.processed_total == m.processed_durable + len(m.acked)



class AckedInGroups(QueueMachine):
    """Acknowledgements committed in groups, once a second: a kill lands between two
    groups often, and the replay is a run of jobs. (The default 50 ms behaves the same,
    but a step of this test takes longer than that, so a kill would rarely catch one.)"""

    ack_interval_ms = 1000


class AckedOneByOne(QueueMachine):
    """ack_interval_ms = 0: each acknowledgement committed before the next request's.

    An acknowledged job comes back only if a kill beats the commit that follows its
    handler's return by a millisecond or so (`kill_after`): possible, and checked when it
    happens, but not something every run can promise."""

    ack_interval_ms = 0
    must_redeliver = False


class AckedRarely(QueueMachine):
    """Acknowledgements that stay uncommitted for the whole of a short program (only a
    failed attempt, a dead letter or a clean stop commits them)."""

    ack_interval_ms = 60_000


# -- random programs -----------------------------------------------------------------------

# The CI budget, per class: 8 programs of 40 steps, about 30-60 s on a 2-core machine.
CI_EXAMPLES = 8
STEPS = 40
#: COLLECTOR_MODEL_MINUTES=N: run batches of CI_EXAMPLES until the file took about N min.
LONG_MINUTES = float(os.environ.get("COLLECTOR_MODEL_MINUTES", "0") or 0)
RANDOM_CLASSES: list[type[QueueMachine]] = [AckedInGroups, AckedOneByOne, AckedRarely]
NAMED_CASES_S = 15  # what the named cases take, left out of a long run's budget

# No shrinking: every replay of a failing program costs server starts, and a real server's
# timing makes replays differ (Hypothesis would call it flaky). The failing program is
# printed in full, step by step, which is short enough to read.
_SETTINGS = settings(max_examples=CI_EXAMPLES, stateful_step_count=STEPS, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])


_run_machine: Callable[..., None] = run_state_machine_as_test  # typed (Hypothesis's is not)
#: Hypothesis's private `_min_steps` (see below), passed only while Hypothesis takes it: a
#: release without it makes programs shorter, not the test an error.
_MIN_STEPS: dict[str, int] = (
    {"_min_steps": STEPS - 1}
    if "_min_steps" in inspect.signature(run_state_machine_as_test).parameters else {})


class _ReachReport:
    """A plugin that prints the reach of each class run in the terminal summary."""

    name = "collector-model-reach"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.section("model reach")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def reach_report(request: pytest.FixtureRequest) -> _ReachReport:
    manager = request.config.pluginmanager
    plugin = manager.get_plugin(_ReachReport.name)
    if plugin is None:
        plugin = _ReachReport()
        manager.register(plugin, _ReachReport.name)
    assert isinstance(plugin, _ReachReport)
    return plugin


@pytest.mark.timeout(120 + 60 * LONG_MINUTES)
@pytest.mark.parametrize("machine_class", RANDOM_CLASSES, ids=lambda c: c.__name__)
def test_random_programs(machine_class: type[QueueMachine], reach_report: _ReachReport) -> None:
    """Random programs against the model; then what they reached is printed and checked."""
    global _reach
    reach = _reach = Reach()
    deadline = None
    if LONG_MINUTES > 0:
        share = max(60 * LONG_MINUTES - NAMED_CASES_S, 0) / len(RANDOM_CLASSES)
        deadline = time.monotonic() + share
    try:
        while True:
            # _min_steps: without it Hypothesis ends about a third of the programs after
            # a step or none (it explores the "stop here" branch like any other choice),
            # and each costs a server start all the same.
            _run_machine(machine_class, settings=_SETTINGS, **_MIN_STEPS)
            if deadline is None or time.monotonic() >= deadline:
                break
    finally:
        _reach = None
        reach_report.lines.append(reach.summary(machine_class.__name__))
    if machine_class.must_redeliver:
        assert reach.redeliveries > 0, (
            f"no acknowledged job came back after a kill: {reach.summary(machine_class.__name__)}")


# -- named cases ---------------------------------------------------------------------------
# Hypothesis explores at random within a small CI budget; these fixed programs make sure
# that every run walks through the crash windows that matter, checked by the same model.

Program = list[tuple[str, dict[str, Any]]]

NAMED_CASES: dict[str, tuple[type[QueueMachine], Program]] = {
    "acks_before_a_202_are_durable_with_ack_interval_0": (AckedOneByOne, [
        ("enqueue", {"count": 4, "as_array": True, "key": "none"}),
        ("process", {}), ("process", {}),
        ("enqueue", {"count": 1, "as_array": False, "key": "none"}),
        ("process", {}),
        ("restart", {"how": "kill"}),  # only the last ack and the job in flight may come back
        ("process", {}), ("process", {}),
    ]),
    "kill_between_acknowledgement_groups_replays_a_run": (AckedInGroups, [
        ("enqueue", {"count": 4, "as_array": True, "key": "new"}),
        ("enqueue", {"count": 2, "as_array": True, "key": "none"}),
        ("process", {}), ("process", {}),
        ("process", {}),
        ("restart", {"how": "kill"}),
        ("enqueue", {"count": 4, "as_array": True, "key": "again"}),  # replayed after a kill
        ("process", {}), ("process", {}),
    ]),
    "failed_attempts_survive_a_kill_and_the_job_is_dead_lettered": (AckedInGroups, [
        ("enqueue", {"count": 2, "as_array": True, "key": "none"}),
        ("handler_fails", {}), ("handler_fails", {}),
        ("restart", {"how": "kill"}),
        ("handler_fails", {}),  # attempt 3 of 3: dead letter, the line moves on
        ("dead_letter", {}),
        ("restart", {"how": "kill"}),
        ("enqueue", {"count": 1, "as_array": False, "key": "none"}),
        ("process", {}),
    ]),
    "clean_stop_with_a_call_in_flight": (AckedOneByOne, [
        ("enqueue", {"count": 3, "as_array": True, "key": "none"}),
        ("process", {}),
        ("restart", {"how": "term"}),
        ("process", {}),
    ]),
}


# Crash windows the model test once found the queue getting wrong; kept as regressions.
REGRESSIONS: dict[str, tuple[type[QueueMachine], Program]] = {
    "record_attempt_commits_a_later_row_before_earlier_acks": (AckedRarely, [
        ("enqueue", {"count": 3, "as_array": True, "key": "none"}),  # one row: seqs 1-3
        ("process", {}), ("process", {}), ("process", {}),
        ("enqueue", {"count": 2, "as_array": True, "key": "none"}),  # one row: seqs 4-5
        ("process", {}),  # 4 done; nothing of it committed yet
        ("handler_fails", {}),  # 5 failed once: its row's done_upto = 4 committed alone
        ("restart", {"how": "kill"}),  # 1-3 come back, 4 does not
    ]),
    "record_attempt_makes_acks_durable_without_counting_them": (AckedRarely, [
        ("enqueue", {"count": 3, "as_array": True, "key": "none"}),
        ("process", {}),
        ("handler_fails", {}),
        ("restart", {"how": "kill"}),  # job 1 is done on disk, processed_total says 0
    ]),
    # SIGTERM cancelled the worker while record_attempt's write (carrying job 1's
    # acknowledgement) ran in the queue's thread: the write committed, the cancellation
    # put the acknowledgement back, close() committed it again: processed_total 2, not 1.
    "a_stop_during_record_attempt_counts_its_acks_once": (AckedRarely, [
        ("first_events", {"count": 3}),
        ("process", {}),
        ("handler_fails", {}),
        ("restart", {"how": "term"}),
    ]),
}


@pytest.mark.parametrize("name", [*NAMED_CASES, *REGRESSIONS])
def test_named_case(name: str) -> None:
    machine_class, program = {**NAMED_CASES, **REGRESSIONS}[name]
    machine = machine_class()
    try:
        machine.agrees_with_the_model()
        for rule_name, arguments in program:
            getattr(machine, rule_name)(**arguments)
            machine.agrees_with_the_model()
    finally:
        machine.teardown()
    assert not machine.broken
