"""The durable FIFO: the only module that touches persist-queue and the queue's SQLite file.

Design (see docs/architecture.md):

* Storage is persist-queue's ``SQLiteBase`` with our own SQL. A row holds a contiguous
  run of jobs (seqs ``first_seq`` .. ``_id``), written by one group commit, as a JSON
  array of request groups ``[received_at, source, first sequence, [event, ...]]`` in
  which each request's events are the bytes it sent (never serialised again): the per-row
  cost of SQLite (B-tree insert, record header, page bookkeeping) is paid once per
  commit, not once per event, and so is the GIL hand-off per statement. The key
  ``_id`` is the row's LAST seq, so SQLite's AUTOINCREMENT high-water mark is the
  highest seq ever handed out and seqs are never reused.
* Rows are deleted as soon as every job in them is done (acknowledged or dead), so
  taking the next job is one index seek whether 0 or 10**6 jobs were processed before.
  A partly done row records how far it got (``done_upto``).
* Every SQLite call runs in one executor thread owned by this module.
* Concurrent ``put`` calls are group-committed: requests wait in an outbox, and a writer
  running in the executor thread commits everything in it as one transaction, then
  what came in meanwhile as the next, until it is empty (all or none, so each request
  is all or none too). The thread hands out the seqs, in commit order. A request is
  answered only after its COMMIT returned; with ``durability = "full"`` that COMMIT is
  fsynced (``synchronous=FULL``). A transaction of fresh events is one multi-row INSERT
  in autocommit mode: every statement costs the thread a wait for the GIL.
* Acknowledgements are batched: every ``ack_interval_ms`` they go through the outbox
  into the next transaction (and are written before an attempt or a dead letter is
  recorded, and at close), without an fsync of their own. A
  lost acknowledgement only replays a job (at least once).
* Jobs just committed are handed to the worker from memory, so it does not read back
  what was just written; only a backlog beyond the in-memory window is read from disk,
  in pages, in ``seq`` order.
"""

from __future__ import annotations

from collector.queue.check import FileReport, inspect_file, integrity_problems, read_pending
from collector.queue.durable import DurableQueue, QueueStats
from collector.queue.protocol import JobQueue, WorkQueue
from collector.queue.recover import NothingToRecoverError, RecoverReport, recover_file
from collector.queue.rows import QUEUE_FILE, Accepted, DeadJob, dead_json

__all__ = [
    "QUEUE_FILE", "Accepted", "DeadJob", "DurableQueue", "FileReport", "JobQueue",
    "NothingToRecoverError", "QueueStats", "RecoverReport", "WorkQueue", "dead_json",
    "inspect_file", "integrity_problems", "read_pending", "recover_file",
]
