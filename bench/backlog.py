"""Watching a gateway's journal from outside: backlog, lag, and when the last entry was processed.

Acknowledging is not processing: a message is acknowledged once its raw bytes are in the journal,
and becomes a case only when the pipeline has finished its journal entry. The benchmarks that
measure processing (sustained, cluster_throughput) read the journal table read-only, as an
operator's query would, while the load runs: how many entries are still pending, how old the
oldest of them is (the lag), and, once nothing is pending, the time the last one was finished
(`journal_entry.processed_at`, written by the pipeline itself, so the figure does not depend on
how often this module looks).

With SQLite the journal is a database file of its own (GATEWAY_DATA_DIR/journal.db) and it is
opened read-only; with PostgreSQL it is the journal_entry table of the shared database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text

#: Statuses of journal_entry (store.states.JournalStatus) that mean the pipeline is done with it.
FINISHED_STATUSES = ("done", "duplicate", "quarantined")
FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED_STATUSES)


def sqlite_read_only_url(path: Path) -> str:
    """A SQLAlchemy URL opening an SQLite file read-only (the benchmark must not take write locks)."""
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def epoch_of(value: Any) -> float | None:
    """Seconds since the epoch of a stored timestamp (UTC; SQLite hands back text, PostgreSQL a datetime)."""
    if value is None:
        return None
    stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # the gateway stores UTC
    return stamp.timestamp()


@dataclass(frozen=True)
class BacklogSample:
    """One look at the journal, `at_s` seconds after the run's origin."""

    at_s: float
    pending: int  # not finished yet: `pending`, or any in-between state a pipeline may add (a claim)
    finished: int
    lag_s: float  # age of the oldest entry not finished; 0.0 when there is none


@dataclass(frozen=True)
class JournalTotals:
    """The journal once the run is over."""

    entries: int
    by_status: dict[str, int]
    last_processed_epoch: float | None  # when the pipeline finished its last entry

    @property
    def finished(self) -> int:
        return sum(self.by_status.get(status, 0) for status in FINISHED_STATUSES)

    @property
    def pending(self) -> int:
        return self.entries - self.finished


def status_counts(connection: Connection) -> dict[str, int]:
    rows = connection.execute(text("SELECT status, count(*) FROM journal_entry GROUP BY status")).tuples().all()
    return {str(status): int(count) for status, count in rows}


class JournalWatch:
    """Read-only queries on one journal; `origin` (time.time()) is the zero of every sample."""

    def __init__(self, journal_url: str, *, origin: float) -> None:
        self.engine: Engine = create_engine(journal_url)
        self.origin = origin
        self.samples: list[BacklogSample] = []

    def dispose(self) -> None:
        self.engine.dispose()

    def sample(self) -> BacklogSample:
        with self.engine.connect() as connection:
            counts = status_counts(connection)
            # Ids grow with arrival, so the lowest unfinished id is (near enough) the oldest unfinished
            # entry. "Not finished" rather than "pending": a pipeline may add states between the two.
            oldest = connection.execute(
                text(f"SELECT received_at FROM journal_entry WHERE status NOT IN ({FINISHED_SQL}) ORDER BY id LIMIT 1")
            ).scalar()
        now = time.time()
        received = epoch_of(oldest)
        finished = sum(counts.get(status, 0) for status in FINISHED_STATUSES)
        return BacklogSample(
            at_s=now - self.origin,
            pending=sum(counts.values()) - finished,
            finished=finished,
            lag_s=0.0 if received is None else max(0.0, now - received),
        )

    def totals(self) -> JournalTotals:
        with self.engine.connect() as connection:
            counts = status_counts(connection)
            last = connection.execute(text("SELECT max(processed_at) FROM journal_entry")).scalar()
        return JournalTotals(entries=sum(counts.values()), by_status=counts, last_processed_epoch=epoch_of(last))

    async def sample_until(self, stop: asyncio.Event, interval_s: float) -> None:
        """Append a sample every interval_s until `stop` is set (queries run in a thread)."""
        while not stop.is_set():
            try:
                self.samples.append(await asyncio.to_thread(self.sample))
            except Exception:
                pass
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass

    async def wait_drained(self, timeout_s: float, interval_s: float = 0.2) -> float | None:
        """Seconds until every entry is finished (None: not within timeout_s); samples are kept."""
        started = time.monotonic()
        while True:
            sample = await asyncio.to_thread(self.sample)
            self.samples.append(sample)
            if sample.pending == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                return None
            await asyncio.sleep(interval_s)

    def max_lag_s(self) -> float:
        return max((sample.lag_s for sample in self.samples), default=0.0)


def count_rows(database_url: str, table: str) -> int | None:
    """Rows in one table of the gateway's database (read-only use); None if it cannot be read."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    except Exception:
        return None
    finally:
        engine.dispose()
