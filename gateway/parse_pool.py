"""Parsing ahead on the other cores: journal entries the pipeline will take next, parsed in a pool.

`parse_message` is pure and CPU-bound (bytes in, a frozen `ParsedMessage` out), so it is the step
that can leave the gateway's process: while one batch's transaction runs, the runner hands the
entries of the next one to a small `ProcessPoolExecutor`, and the pipeline picks their results up
when it reaches them. Whatever the pool does not deliver (an entry never handed over, one too big
to ship, a child that died or hung) the pipeline parses in-process as before, so the pool can only
save time, never lose an entry; a dead child is not the gateway dying, so it is not an attempt that
counts towards quarantining the entry. Children are started with 'spawn': they must not inherit
the event loop, the listening sockets or the database engines, and they are the gateway's own
children, so each can see its gateway die (kill -9 runs no shutdown code) and follow it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.parse import ParseBudget, ParsedMessage, parse_message

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from store.models import JournalEntry

log = logging.getLogger(__name__)

CHUNK_ENTRIES = 8  # entries per task: a 2 KB message parses in ~1 ms, about what shipping one costs
PARENT_CHECK_SECONDS = 0.5  # how soon a child notices that its gateway died
CHILD_NICENESS = 10  # added to a child's nice value: the CPU goes to acknowledging first


@dataclass(frozen=True)
class ParseJob:
    """One entry to parse ahead: what `parse_message` needs, exactly as the pipeline would pass it."""

    journal_id: int
    raw: bytes
    envelope_sender: str | None


def _start_child(parent_pid: int) -> None:
    """Runs first in each pool child. Parsing ahead is worth less than an acknowledgement: on a
    busy machine the scheduler should prefer the gateway's own process (and the senders), so the
    child runs at a lower priority. And it exits when the gateway is gone: a child waiting for
    work holds its own end of the task queue, so nothing else would ever tell it (orphans forever)."""
    os.nice(CHILD_NICENESS)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _ready() -> bool:
    return True


def _parse_chunk(budget: ParseBudget, jobs: list[ParseJob]) -> list[ParsedMessage]:
    """Runs in a pool child."""
    return [parse_message(job.raw, envelope_sender=job.envelope_sender, budget=budget) for job in jobs]


def default_workers() -> int:
    """One core for the gateway's own process, the others for parsing (at least one)."""
    return max(1, (os.cpu_count() or 1) - 1)


class ParsePool:
    """Parses entries ahead in child processes; `take` hands a result over once, or None."""

    def __init__(self, *, workers: int, budget: ParseBudget, max_entry_bytes: int) -> None:
        self._workers = workers
        self._budget = budget
        self._max_entry_bytes = max_entry_bytes
        # A test's fake clock cannot cross into another process (and a lambda does not pickle):
        # with anything but the real monotonic clock every entry is parsed in-process.
        self.enabled = workers > 0 and budget.clock is time.monotonic
        self._executor: ProcessPoolExecutor | None = None
        # journal id -> (its chunk's future, its index in the chunk, time.monotonic() at submission)
        self._ahead: dict[int, tuple[Future[list[ParsedMessage]], int, float]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.crashes = 0  # pools lost to a child that died or hung (each one's entries parsed in-process)
        self.delivered = 0  # results handed to the pipeline

    def wants(self, size: int) -> bool:
        """Whether an entry of `size` raw bytes should be parsed ahead: big ones are parsed where
        they are read, so their bytes never cross a pipe twice (memory stays bounded by SIZE)."""
        return self.enabled and not self._closed and size <= self._max_entry_bytes

    @property
    def workers(self) -> int:
        return self._workers

    def parse_ahead(self, *, journal_engine: Engine, journal_ids: Sequence[int]) -> None:
        """Start parsing entries a later batch will take (read here from the journal)."""
        # store is imported where it is used: the children import this module and need none of it.
        from store import journal
        from store.db import reading

        if not self.enabled:
            return
        wanted = sorted(set(journal_ids) - self.in_flight())
        if not wanted:
            return
        try:
            with reading(journal_engine) as session:
                heads = journal.pending_heads(session=session, journal_ids=wanted)
                small = [head.id for head in heads if self.wants(head.size)]
                entries = journal.get_entries(session=session, journal_ids=small) if small else []
        except Exception as error:  # only time is lost: each entry is parsed in-process when taken
            log.warning("parsing ahead skipped: %s", error)
            return
        self.submit([self._job(entry) for entry in entries])

    def share(self, entries: Sequence[JournalEntry]) -> None:
        """A batch about to be parsed: the pool takes its share of the entries it does not have yet
        (the later ones, which the pipeline reaches last), the pipeline parses the rest meanwhile."""
        if not self.enabled:
            return
        flying = self.in_flight()
        missing = [entry for entry in entries if entry.id not in flying and self.wants(entry.size)]
        share = len(missing) * self._workers // (self._workers + 1)
        self.submit([self._job(entry) for entry in missing[len(missing) - share :]])

    @staticmethod
    def _job(entry: JournalEntry) -> ParseJob:
        from store.text import storable_value

        # The same envelope sender the pipeline passes in-process: MAIL FROM of the cleaned meta.
        return ParseJob(entry.id or 0, entry.raw, storable_value(entry.meta).get("mail_from"))

    def start(self) -> None:
        """Start the children now and wait until they can take work (a child starts a new
        interpreter: better at start-up than in the middle of the first burst of mail)."""
        if not self.enabled:
            return
        with self._lock:
            executor = self._executor_locked()
            ready = [executor.submit(_ready) for _ in range(self._workers)]
        try:
            for future in ready:
                future.result(timeout=60)
        except Exception as error:  # the pool is an optimisation: entries are parsed in-process
            log.warning("parse pool did not start: %s", error)

    def in_flight(self) -> set[int]:
        with self._lock:
            return set(self._ahead)

    def submit(self, jobs: Sequence[ParseJob]) -> None:
        """Start parsing `jobs` in the background; already submitted ids are left as they are."""
        with self._lock:
            jobs = [job for job in jobs if job.journal_id not in self._ahead and self.wants(len(job.raw))]
            if not jobs:
                return
            executor = self._executor_locked()
            for start in range(0, len(jobs), CHUNK_ENTRIES):
                chunk = jobs[start : start + CHUNK_ENTRIES]
                try:
                    future = executor.submit(_parse_chunk, self._budget, chunk)
                except (BrokenProcessPool, RuntimeError) as error:  # broken, or shut down under us
                    self._lost_locked(f"submit failed: {error}")
                    return
                now = time.monotonic()
                for index, job in enumerate(chunk):
                    self._ahead[job.journal_id] = (future, index, now)

    def take(self, journal_id: int) -> ParsedMessage | None:
        """The entry's parsed message if it was submitted and its child delivered; None: parse it here."""
        with self._lock:
            held = self._ahead.pop(journal_id, None)
        if held is None:
            return None
        future, index, submitted = held
        if not future.done():
            # Never wait for a child: one that has not got this far (a busy machine starves it on
            # purpose, see CHILD_NICENESS) is overtaken by parsing here, so the pool never costs
            # the pipeline time. A child busy far beyond the parse budget is stuck: it is replaced.
            future.cancel()
            if time.monotonic() - submitted > self._budget.max_processing_seconds * 1.5 + 10:
                with self._lock:
                    self._lost_locked(f"no result for journal entry {journal_id} in time", kill=True)
            return None
        if future.cancelled():  # its chunk was overtaken by the pipeline for another entry of it
            return None
        try:
            result = future.result(timeout=0)[index]
        except BrokenProcessPool as error:
            with self._lock:
                # The future may come from a pool already replaced; only a broken current one goes.
                if self._executor is not None and getattr(self._executor, "_broken", False):
                    self._lost_locked(str(error))
            log.warning("parse pool lost a child (journal entry %s parsed in-process): %s", journal_id, error)
            return None
        except Exception as error:  # parse_message never raises; a pickling problem might
            log.warning("parse pool failed on journal entry %s (parsed in-process): %r", journal_id, error)
            return None
        self.delivered += 1
        return result

    def forget(self, journal_ids: Sequence[int]) -> None:
        """Drop results nobody will take (the entries went elsewhere); a running chunk finishes."""
        with self._lock:
            for journal_id in journal_ids:
                self._ahead.pop(journal_id, None)

    def ready(self, journal_ids: Sequence[int]) -> bool:
        """Whether every one of these entries was handed over and its child has finished with it."""
        with self._lock:
            held = [self._ahead.get(journal_id) for journal_id in journal_ids]
        return all(item is not None and item[0].done() for item in held)

    @property
    def broken(self) -> bool:
        """Whether the current pool lost a child (it is replaced when an entry of it is taken)."""
        with self._lock:
            return bool(getattr(self._executor, "_broken", False))

    def worker_pids(self) -> list[int]:
        """The pool's child processes (for operators' views and tests)."""
        with self._lock:
            executor = self._executor
            processes = getattr(executor, "_processes", None) or {}
            return [pid for pid in processes if pid]

    def close(self) -> None:
        """Stop the children (with the gateway, and at the end of `gateway ingest`)."""
        with self._lock:
            self._closed = True
            self._ahead.clear()
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _executor_locked(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(os.getpid(),),
            )
        return self._executor

    def _lost_locked(self, reason: str, *, kill: bool = False) -> None:
        """The pool is unusable: count it, drop it (killing a hung child), start afresh next time."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        self.crashes += 1
        log.warning("parse pool replaced: %s", reason)
        if kill:
            # ProcessPoolExecutor (3.11) has no public way to stop a child stuck in a task.
            for pid in list(getattr(executor, "_processes", None) or {}):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        executor.shutdown(wait=False, cancel_futures=True)
