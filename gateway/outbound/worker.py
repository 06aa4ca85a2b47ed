"""The sending worker: claim due outbox rows, hand them to the relay, record what happened.

Temporary failures retry with exponential backoff and jitter until the give-up age; permanent
failures (5xx, or giving up) mark the row failed and tell the staff queue. Rows are claimed with a
lease, so a row whose instance died mid-send is sent again after the lease by whoever is alive.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from gateway.casetag import strip_leading_tag
from gateway.metrics import OUTBOX
from gateway.outbound.compose import MissingAttachment, expand_attachments, referenced_blobs
from gateway.outbound.relay import PermanentFailure, Relay, RelaySession, TemporaryFailure, attempt_deadline
from gateway.outbound.replies import Outgoing, Replies
from gateway.settings import Settings
from store import cases, outbox
from store.blobs import make_blob_store
from store.db import reading, transaction
from store.models import OutboxItem, utcnow

log = logging.getLogger(__name__)


class OutboxWorker:
    def __init__(self, *, engine: Engine, settings: Settings, relay: Relay, replies: Replies) -> None:
        self._engine = engine
        self._settings = settings
        self._relay = relay
        self._replies = replies
        self._wake = asyncio.Event()
        self._blobs = make_blob_store(settings.blob_store, settings.data_dir)
        # Longer than any attempt can take (plus time to record it): a row is claimed again only
        # once its sender is surely gone, never while an attempt may still be on the wire.
        timeout = settings.relay_timeout_seconds
        self._lease = timedelta(seconds=attempt_deadline(timeout) + timeout)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.run_once():
                    pass
            except OperationalError as error:
                log.warning("outbox: database unavailable: %s", error)
            except Exception:
                log.exception("outbox: unexpected error")
            self._wake.clear()
            timeout = await self._seconds_until_due()  # before wait() exists: a cancel here leaks nothing
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                pass

    async def _seconds_until_due(self) -> float:
        """How long to sleep: until the next row is due, at most one poll interval.

        Never raises: the worker must outlive any database trouble, or the outbox would stop for good.
        """
        poll = self._settings.outbox_poll_seconds
        try:
            due = await asyncio.to_thread(self._next_due)
        except Exception as error:
            log.warning("outbox: cannot read the next due time: %s", error)
            return poll
        if due is None:
            return poll
        return max(0.05, min(poll, (due - utcnow()).total_seconds()))

    def _next_due(self) -> datetime | None:
        with reading(self._engine) as session:
            return outbox.next_due_at(session=session)

    async def run_once(self) -> int:
        """Send what is due now; returns how many rows were attempted.

        The claimed rows are dealt out to at most `relay_max_connections` lanes; each lane is one
        relay session (one SMTP connection) that carries its rows one after the other.
        """
        items = await asyncio.to_thread(self._claim)
        lanes = max(1, min(self._settings.relay_max_connections, len(items)))
        sent = _SentMarks(self._engine)
        try:
            await asyncio.gather(*(self._lane(items[number::lanes], sent) for number in range(lanes)))
        finally:
            await sent.drain()  # what the relay accepted is recorded before the pass ends, cancelled or not
        return len(items)

    async def _lane(self, items: list[OutboxItem], sent: _SentMarks) -> None:
        async with self._relay.session() as connection:
            for position, item in enumerate(items):
                if position and not self._lease_covers_an_attempt(item):
                    # The rows before took long (a slow relay): sending this one now could outlast
                    # its lease and let another instance send it too. Hand it back unattempted.
                    await asyncio.to_thread(self._release, item.id or 0)
                    continue
                await sent.room()
                await self._attempt(item, connection, sent)

    def _wire_bytes(self, item: OutboxItem) -> bytes:
        """The row's bytes with the attachments it refers to put in (the row holds no copy)."""
        if not referenced_blobs(item.raw):
            return item.raw
        with reading(self._engine) as session:
            return expand_attachments(item.raw, lambda sha256: self._blobs.get(session=session, sha256=sha256))

    def _lease_covers_an_attempt(self, item: OutboxItem) -> bool:
        if item.claimed_until is None:
            return False
        deadline = attempt_deadline(self._settings.relay_timeout_seconds)
        return (item.claimed_until - utcnow()).total_seconds() > deadline

    def _claim(self) -> list[OutboxItem]:
        with transaction(self._engine) as session:
            return list(outbox.claim_due(session=session, instance=self._settings.instance_name, lease=self._lease))

    def _release(self, item_id: int) -> None:
        with transaction(self._engine) as session:
            outbox.release(session=session, item_id=item_id, instance=self._settings.instance_name)

    async def _attempt(self, item: OutboxItem, connection: RelaySession, sent: _SentMarks) -> None:
        """One delivery attempt of `item` on `connection`; if the relay accepts it, `sent` records it."""
        try:
            raw = await asyncio.to_thread(self._wire_bytes, item)
        except MissingAttachment as error:
            await asyncio.to_thread(self._record_failed, item.id or 0, str(error))
            return
        try:
            await connection.send(raw=raw, mail_from=item.mail_from, recipient=item.recipient, key=f"outbox-{item.id}")
        except TemporaryFailure as error:
            await asyncio.to_thread(self._record_temporary, item.id or 0, str(error))
        except PermanentFailure as error:
            await asyncio.to_thread(self._record_failed, item.id or 0, str(error))
        except Exception as error:  # a relay bug must not lose the row: retry it later
            log.exception("outbox: relay error for row %s", item.id)
            await asyncio.to_thread(self._record_temporary, item.id or 0, f"{type(error).__name__}: {error}")
        else:
            sent.add(item.id or 0)

    def _ours(self, item: OutboxItem | None) -> bool:
        """Whether this instance still holds the row. A failed attempt must not overwrite what
        another instance recorded after reclaiming it (it may have sent it meanwhile)."""
        return item is not None and item.status == "sending" and item.claimed_by == self._settings.instance_name

    def _record_temporary(self, item_id: int, error: str) -> None:
        with transaction(self._engine) as session:
            item = outbox.get_item(session=session, item_id=item_id)
            if item is None or not self._ours(item):
                return
            item.attempts += 1
            item.last_error = error[:2000]
            give_up_at = item.created_at + timedelta(hours=self._settings.outbox_give_up_hours)
            if utcnow() >= give_up_at:
                self._fail(session, item, f"gave up after {item.attempts} attempts: {error}")
                OUTBOX.labels(result="failed").inc()
                return
            item.status = "queued"
            item.next_attempt_at = utcnow() + timedelta(seconds=self.backoff_seconds(item.attempts))
            item.claimed_by = item.claimed_until = None
            session.add(item)
            log.info("outbox: row %s deferred (attempt %d): %s", item_id, item.attempts, error)
        OUTBOX.labels(result="retried").inc()

    def backoff_seconds(self, attempts: int) -> float:
        base = self._settings.outbox_backoff_seconds * 2 ** max(0, attempts - 1)
        return min(base, self._settings.outbox_backoff_max_seconds) * random.uniform(0.8, 1.2)

    def _record_failed(self, item_id: int, error: str) -> None:
        with transaction(self._engine) as session:
            item = outbox.get_item(session=session, item_id=item_id)
            if item is None or not self._ours(item):
                return
            item.attempts += 1
            self._fail(session, item, error)
        OUTBOX.labels(result="failed").inc()

    def _fail(self, session: Session, item: OutboxItem, error: str) -> None:
        mark_failed(session=session, item=item, error=error, settings=self._settings, replies=self._replies)


class _SentMarks:
    """Rows the relay accepted, recorded as sent in groups: each transaction takes every row
    accepted while the one before it ran (a group commit, as the journal's). One transaction per
    mail (a pool checkout with its ping, two UPDATEs and a commit) cost more than handing the mail
    to the relay. A crash between acceptance and commit has the mail sent again after its lease,
    as before; so that an outage cannot widen that to a whole pass, lanes stop once recording
    fails and wait while MAX_UNRECORDED accepted mails are not recorded yet."""

    MAX_UNRECORDED = 8

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiting: list[int] = []
        self._in_flight = 0  # the rows of the transaction running now
        self._recording: asyncio.Task[None] | None = None
        self._group_done = asyncio.Event()

    def add(self, item_id: int) -> None:
        self._waiting.append(item_id)
        if self._recording is None or self._recording.done():
            self._recording = asyncio.create_task(self._record_waiting())

    async def room(self) -> None:
        """Before a lane's next attempt: raises what recording raised (the database is gone: the
        lane stops sending what it could not record), waits while too much is unrecorded."""
        while True:
            recording = self._recording
            if recording is not None and recording.done():
                recording.result()  # raises what it raised
            if recording is None or len(self._waiting) + self._in_flight < self.MAX_UNRECORDED:
                return
            await self._group_done.wait()

    async def drain(self) -> None:
        """Until everything added is recorded; raises what recording raised (a database outage:
        the rows stay claimed and are sent again once their lease ends)."""
        while self._recording is not None:
            recording = self._recording
            await asyncio.shield(recording)  # a cancelled pass still records what was accepted
            if recording is self._recording and recording.done():
                self._recording = None

    async def _record_waiting(self) -> None:
        while self._waiting:
            item_ids, self._waiting = self._waiting, []
            self._in_flight = len(item_ids)
            done, self._group_done = self._group_done, asyncio.Event()
            try:
                await asyncio.to_thread(self._record, item_ids)
            finally:
                self._in_flight = 0
                done.set()

    def _record(self, item_ids: list[int]) -> None:
        # Accepted by the relay: true even if another instance reclaimed a row meanwhile.
        with transaction(self._engine) as session:
            marked = outbox.mark_sent(session=session, item_ids=item_ids)
        OUTBOX.labels(result="sent").inc(marked)


def mark_failed(*, session: Session, item: OutboxItem, error: str, settings: Settings, replies: Replies) -> None:
    """Record a permanent failure of `item` (5xx, given up, or bounced later) and tell the staff queue.

    Shared by the worker and the pipeline's bounce handling, so a 550 at sending time and a DSN
    arriving a day later look the same to staff. Each row is reported once: a row that is already
    failed is left alone, so repeated bounces of one message do not flood the staff queue.
    """
    if item.status == "failed":
        return
    item.status, item.last_error = "failed", error[:2000]
    item.claimed_by = item.claimed_until = None
    session.add(item)
    cases.mark_outbound_delivery(session=session, outbox_ids=[item.id or 0], status="failed")
    log.warning("outbox: row %s to %s failed: %s", item.id, item.recipient, error)
    staff_queue = settings.staff_queue_address.lower()
    case = cases.get_case(session=session, case_id=item.case_id) if item.case_id else None
    if case is None or item.recipient == staff_queue:
        return  # a notice about a failed notice to staff would only fail the same way
    replies.queue(
        session=session,
        case=case,
        mail=Outgoing(
            kind="delivery_failed",
            recipient=staff_queue,
            automatic=True,
            to_staff=True,
            context={"recipient": item.recipient, "error": error, "original_subject": _subject_of(item)},
            in_reply_to=item.message_id,
        ),
    )


def _subject_of(item: OutboxItem) -> str:
    """The failed message's own subject ("[#N] Re: …"), which is what staff recognise."""
    header = BytesHeaderParser(policy=policy.default).parsebytes(item.raw)
    return strip_leading_tag(str(header.get("Subject", "")))  # the notice carries the tag itself
