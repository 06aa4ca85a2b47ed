"""accept(): the one durable write every producer (SMTP, IMAP, panel, `ingest`) goes through.

A producer acknowledges its input (SMTP 250, IMAP flag/move/delete, HTTP 201) only after `accept`
returns, and `accept` returns only after the raw bytes are committed to the journal table.

Group commit: callers queue their entries; one writer commits everything queued in a single
transaction (one fsync) and, the moment that commit is done, starts on whatever queued up
meanwhile. There is no fixed wait, so a lone sender pays one commit and many concurrent senders
share one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import col

from gateway.metrics import ACCEPTED, ACK_LATENCY
from store.models import JournalEntry, utcnow

log = logging.getLogger(__name__)

BUSY_WINDOW_SECONDS = 0.02
GROUP_MAX_BYTES = 16 * 1024 * 1024  # raw bytes in one group commit (a larger message goes alone)


class JournalUnavailable(Exception):
    """The journal could not be written: nothing was acknowledged, the producer must say so."""


@dataclass(frozen=True)
class Receipt:
    journal_id: int
    raw_sha256: str


@dataclass
class _Queued:
    raw: bytes
    source: str
    meta: dict[str, Any]
    done: asyncio.Future[Receipt] = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)  # for the acknowledgement latency


class Intake:
    def __init__(
        self,
        engine: Engine,
        *,
        instance_name: str,
        on_journaled: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._engine = engine
        self._instance_name = instance_name
        self._on_journaled = on_journaled
        self._queue: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self.last_write = 0.0  # loop time of the last journal commit

    @property
    def busy(self) -> bool:
        """Journaling right now, or a moment ago: mail is arriving."""
        loop_time = asyncio.get_running_loop().time()
        return bool(self._queue) or loop_time - self.last_write < BUSY_WINDOW_SECONDS

    async def accept(self, raw: bytes, *, source: str, meta: dict[str, Any] | None = None) -> Receipt:
        """Journal `raw` durably; raises JournalUnavailable if that cannot be done."""
        done: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(raw=raw, source=source, meta=dict(meta or {}), done=done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="journal-writer")
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._queue:
            batch = self._next_group()
            try:
                receipts = await asyncio.to_thread(self._write, batch)
            except Exception as error:  # the database is unreachable, the disk is full, ...
                log.error("journal write of %d message(s) failed: %s", len(batch), error)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(JournalUnavailable(str(error)))
                continue
            self.last_write = asyncio.get_running_loop().time()
            committed_at = time.perf_counter()
            for item, receipt in zip(batch, receipts, strict=True):
                # Counted here, not in the caller: a journaled entry counts even if its caller went away.
                ACCEPTED.labels(source=item.source).inc()
                ACK_LATENCY.labels(source=item.source).observe(committed_at - item.queued_at)
                if not item.done.done():
                    item.done.set_result(receipt)
            if self._on_journaled is not None:
                self._on_journaled([receipt.journal_id for receipt in receipts])

    def _next_group(self) -> list[_Queued]:
        """What queued, in order, up to GROUP_MAX_BYTES of raw bytes (always at least one entry):
        several large messages that end at the same moment are committed one after another, not
        in one transaction that holds them all (bench/peak_memory.py: four 60 MiB messages
        journaled together raised the peak by another 60 MiB)."""
        taken, size = 0, 0
        for item in self._queue:
            if taken and size + len(item.raw) > GROUP_MAX_BYTES:
                break
            taken += 1
            size += len(item.raw)
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    def _write(self, batch: list[_Queued]) -> list[Receipt]:
        now = utcnow()
        digests = [hashlib.sha256(item.raw).hexdigest() for item in batch]
        rows = [
            {
                "source": item.source,
                "raw": item.raw,
                "raw_sha256": digest,
                "size": len(item.raw),
                "received_at": now,
                "meta": item.meta,
                "status": "pending",
                "attempts": 0,
                "received_by": self._instance_name,
            }
            for item, digest in zip(batch, digests, strict=True)
        ]
        statement = insert(JournalEntry).returning(col(JournalEntry.id), sort_by_parameter_order=True)
        with self._engine.begin() as connection:
            ids = connection.execute(statement, rows).scalars().all()
        receipts = []
        for journal_id, digest in zip(ids, digests, strict=True):
            assert journal_id is not None  # RETURNING the primary key of an inserted row
            receipts.append(Receipt(journal_id=journal_id, raw_sha256=digest))
        return receipts
