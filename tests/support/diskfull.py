"""A disk that fills: fill a file system, POST until refused, check what the worker handled."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.model import (
    GATE_ENV,
    RECORD_ENV,
    Answer,
    RecordReader,
    post_events,
    wait_until,
)
from tests.support.server import ServerProcess


def fill(path: Path) -> int:
    """Write `path` until the file system has no byte left; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        try:
            os.fsync(fd)
        except OSError as exc:  # a file system may only find out here
            if exc.errno != errno.ENOSPC:
                raise
    finally:
        os.close(fd)
    return written


@dataclass
class Intake:
    """What the test sent and what the server answered."""

    acknowledged: dict[str, int] = field(default_factory=dict)  # event id -> seq
    refused: list[str] = field(default_factory=list)  # ids of events answered 507
    answers_507: list[Answer] = field(default_factory=list)
    sent: int = 0

    def post(self, port: int, count: int, key: str | None = None) -> Answer:
        """POST `count` fresh events as one array; remember what became of them."""
        ids = [f"ev{self.sent + k}" for k in range(count)]
        self.sent += count
        events = [{"id": i, "Event": "UpdateState", "pad": EVENT_PAD} for i in ids]
        answer = post_events(port, events, {"Idempotency-Key": key} if key else None)
        if answer.status == 202:
            for k, event_id in enumerate(ids):
                self.acknowledged[event_id] = answer.body["first_seq"] + k
        elif answer.status == 507:
            self.refused.extend(ids)
            self.answers_507.append(answer)
        else:
            raise AssertionError(f"POST answered {answer}, expected 202 or 507")
        return answer

    def until_507(self, port: int, count: int, limit: int = 2000) -> tuple[Answer, str]:
        """POST batches, each with its own Idempotency-Key, until one is refused for lack
        of space; that answer and its key."""
        for n in range(limit):
            key = f"fill-{n}"
            answer = self.post(port, count, key=key)
            if answer.status == 507:
                return answer, key
        raise AssertionError(f"no 507 after {limit} requests of {count} events")


def start_held(server_process: ServerFactory, tmp_path: Path, data_dir: Path,
               **env: str) -> tuple[ServerProcess, RecordReader, Path]:
    """A server whose worker waits for the gate file before handling anything."""
    record = tmp_path / "record.log"
    gate = tmp_path / "gate"
    server = server_process(args=["--handler", "tests.support.model:held"],
                            env={RECORD_ENV: str(record), GATE_ENV: str(gate), **env})
    server.data_dir = data_dir
    server.start()
    return server, RecordReader(record), gate


def check_handled_exactly_the_acknowledged(reader: RecordReader, intake: Intake) -> None:
    """Every 202'd event handled once, in seq order; no refused event handled at all."""
    done: list[tuple[int, str]] = []

    def all_done() -> bool:
        done.extend((line.seq, line.rest[1]) for line in reader.drop_unread())
        return len(done) >= len(intake.acknowledged)

    wait_until(all_done, f"the worker handled {len(intake.acknowledged)} jobs", timeout=60)
    seqs = [seq for seq, _ in done]
    assert seqs == sorted(seqs), "handled out of seq order"
    handled = {eid: seq for seq, eid in done}
    assert handled == intake.acknowledged
    assert not set(intake.refused) & set(handled), "a refused event was handled"


ServerFactory = Callable[..., ServerProcess]


EVENT_PAD = "x" * 900
