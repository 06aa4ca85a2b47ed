"""process(): one journal entry -> parse, classify, thread, record, mail; it owns the transaction.

Everything a message causes (its case, message and attachment rows, case changes, outbox rows, the
journal entry marked done) is committed together or not at all. An error rolls it all back and the
entry is quarantined with its reason, bytes intact, ready for `gateway quarantine retry`. A
database that cannot be reached is not the message's fault: the entry stays pending for replay.
Here live the transaction, de-duplication, deferral and quarantine, and the runner that feeds
entries in; the rows are gateway.record's, staff replies gateway.staff's, the mail to send
gateway.outbound.choose's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from gateway.addresses import ReplyAddresses
from gateway.classify import MailFacts, classify
from gateway.metrics import PROCESSED, PROCESSING_TIME, QUARANTINED
from gateway.outbound.choose import MailChoice
from gateway.outbound.replies import Replies
from gateway.parse import ParsedMessage, parse_message
from gateway.record import Inbound, Recorder
from gateway.settings import Settings
from gateway.staff.answer import StaffAnswers
from gateway.threads import ThreadQuery, decide, has_thread_hints
from gateway.trust.gate import TrustGate
from gateway.trust.verdict import TrustVerdict
from store import journal, outbox, processed
from store.blobs import BlobStore
from store.db import reading, transaction
from store.models import JournalEntry, ProcessedEntry, utcnow
from store.states import Direction, JournalStatus, Outcome, VerdictKind
from store.text import storable_value

log = logging.getLogger(__name__)

DEFER_SECONDS = 0.5  # how soon a deferred entry is tried again


class Deferred(Exception):
    """Not now: the entry stays pending and is processed again shortly."""


class Pipeline:
    def __init__(
        self,
        *,
        engine: Engine,
        journal_engine: Engine,
        settings: Settings,
        blobs: BlobStore,
        replies: Replies,
        addresses: ReplyAddresses,
    ) -> None:
        self._engine = engine
        self._journal = journal_engine
        # PostgreSQL: the journal is a table of the same database, marked in the same transaction.
        self._shared_journal = journal_engine is engine
        self._settings = settings
        self._replies = replies
        self._addresses = addresses
        self._recorder = Recorder(settings=settings, blobs=blobs, is_own_address=self._is_own_address)
        self._mail = MailChoice(settings=settings, replies=replies)
        self._staff = StaffAnswers(recorder=self._recorder, mail=self._mail)
        self._gate = TrustGate(settings=settings, addresses=addresses, replies=replies)

    # --- transaction ownership -----------------------------------------------------------------

    def process(self, journal_id: int) -> Outcome:
        """Process one entry; returns what it came to (and counts it in the metrics)."""
        started = time.perf_counter()
        outcome = self._process(journal_id)
        if outcome != Outcome.SKIPPED:
            PROCESSED.labels(outcome=outcome.value).inc()
            PROCESSING_TIME.observe(time.perf_counter() - started)
        if outcome == Outcome.QUARANTINED:
            QUARANTINED.inc()
        return outcome

    def _process(self, journal_id: int) -> Outcome:
        try:
            with reading(self._journal) as session:
                entry = journal.get_entry(session=session, journal_id=journal_id)
            if entry is None or entry.status != JournalStatus.PENDING:
                return Outcome.SKIPPED
            limit = self._settings.poison_max_attempts
            if entry.attempts >= limit:
                # Every earlier attempt started and none finished: each one took the process down
                # with it (or was killed). Trying again would only do that again, at every start.
                reason = f"processing did not finish in {entry.attempts} attempts; the process may have died"
                log.error("journal entry %s quarantined: %s", journal_id, reason)
                return self._quarantine(journal_id, reason)
            with transaction(self._journal) as session:  # committed before the work starts
                if journal.begin_attempt(session=session, journal_id=journal_id) is None:
                    return Outcome.SKIPPED
        except OperationalError as error:
            log.warning("journal entry %s deferred, database unavailable: %s", journal_id, error)
            return Outcome.DEFERRED
        outcome = self._attempt(entry)
        if outcome in (Outcome.DEFERRED, Outcome.SKIPPED):
            self._undo_attempt(journal_id)  # it finished, on purpose without an end: not a crash
        return outcome

    def _attempt(self, entry: JournalEntry) -> Outcome:
        journal_id = entry.id or 0
        try:
            # The row keeps the envelope as received; what the steps read from it must be storable
            # (a NUL in MAIL FROM must not quarantine the message on PostgreSQL). In memory only.
            entry.meta = storable_value(entry.meta)
            # Outside the write transaction: it can be slow. The envelope sender is the requester's
            # last resort when no header names a usable address.
            parsed = parse_message(entry.raw, envelope_sender=entry.meta.get("mail_from"))
            trust, parsed = self._gate.assess(entry, parsed)  # DNS lookups: outside it too
            with transaction(self._engine) as session:
                if self._shared_journal and not journal.claim_pending(session=session, journal_id=journal_id):
                    return Outcome.SKIPPED  # another instance has it right now
                finished = processed.get_processed(session=session, journal_id=journal_id)
                if finished is None:
                    finished = self._handle(session, self._inbound(entry, parsed, trust))
                    processed.record_processed(session=session, entry=finished)
                # else: done before a crash that came between this commit and the journal's
                if self._shared_journal:
                    self._mark_journal(session, finished)
            if not self._shared_journal:
                with transaction(self._journal) as journal_session:
                    self._mark_journal(journal_session, finished)
            return Outcome(finished.outcome)
        except OperationalError as error:
            log.warning("journal entry %s deferred, database unavailable: %s", journal_id, error)
            return Outcome.DEFERRED
        except Deferred:
            return Outcome.DEFERRED
        except Exception as error:
            log.exception("journal entry %s quarantined", journal_id)
            return self._quarantine(journal_id, f"{type(error).__name__}: {error}")

    @staticmethod
    def _mark_journal(session: Session, finished: ProcessedEntry) -> None:
        reason = f"duplicate of #{finished.duplicate_of}" if finished.duplicate_of else None
        journal.finish(
            session=session, journal_id=finished.journal_id, status=JournalStatus(finished.outcome), reason=reason
        )

    def _older_pending(self, session: Session, journal_id: int) -> bool:
        if self._shared_journal:
            return journal.has_older_pending(session=session, journal_id=journal_id)
        with reading(self._journal) as journal_session:
            return journal.has_older_pending(session=journal_session, journal_id=journal_id)

    def _quarantine(self, journal_id: int, reason: str) -> Outcome:
        try:
            with transaction(self._journal) as session:
                journal.quarantine(session=session, journal_id=journal_id, reason=reason)
        except OperationalError as error:
            log.warning("could not quarantine entry %s (stays pending): %s", journal_id, error)
            return Outcome.DEFERRED
        return Outcome.QUARANTINED

    def _undo_attempt(self, journal_id: int) -> None:
        try:
            with transaction(self._journal) as session:
                journal.undo_attempt(session=session, journal_id=journal_id)
        except OperationalError as error:  # the count stays one too high; the limit leaves room for that
            log.warning("could not take back the attempt at entry %s: %s", journal_id, error)

    def _inbound(self, entry: JournalEntry, parsed: ParsedMessage, trust: TrustVerdict) -> Inbound:
        facts = MailFacts(
            parsed=parsed,
            mail_from=entry.meta.get("mail_from"),
            own_addresses=self._is_own_address,
            loop_marker=self._replies.loop_marker,
            is_staff=self._settings.is_staff,
            trust=trust,
        )
        panel = entry.meta.get("panel") or {}
        return Inbound(entry=entry, parsed=parsed, verdict=classify(facts), panel=panel, trust=trust)

    def _is_own_address(self, address: str) -> bool:
        address = address.lower()
        return self._addresses.is_ours(address) or address == self._settings.staff_queue_address.lower()

    # --- the decisions -------------------------------------------------------------------------

    def _handle(self, session: Session, inbound: Inbound) -> ProcessedEntry:
        entry, parsed = inbound.entry, inbound.parsed
        message_id = None if parsed.message_id_synthesised else parsed.message_id
        finished = ProcessedEntry(
            journal_id=entry.id or 0,
            outcome=Outcome.DONE,
            raw_sha256=entry.raw_sha256,
            message_id=parsed.message_id,
            sender=inbound.sender,
            content_digest=parsed.content_digest,
        )
        earlier = processed.find_earlier(
            session=session,
            raw_sha256=entry.raw_sha256,
            message_id=message_id,
            sender=inbound.sender,
            content_digest=parsed.content_digest,
        )
        original = earlier.original
        if original is not None:
            finished.outcome, finished.case_id = Outcome.DUPLICATE, original.case_id
            finished.duplicate_of = original.journal_id
            return finished
        if inbound.verdict.kind == VerdictKind.LOOP and message_id is not None:
            ours = outbox.find_by_message_id(session=session, message_id=message_id)
            if ours is not None:
                # One of our own messages came back (a forwarding rule, a misconfigured MTA). The
                # case already holds it as sent; storing it again would open a case for ourselves.
                finished.outcome, finished.case_id = Outcome.DUPLICATE, ours.case_id
                return finished
        if earlier.id_reused_by is not None:
            # Broken mailers, templates and some ticket systems reuse Message-IDs: this is another
            # message under an old ID, stored as its own, with the reuse on record.
            note = f"Message-ID reused: journal entry #{earlier.id_reused_by.journal_id} had it with other content"
            log.info("journal entry %s: %s", entry.id, note)
            inbound = replace(inbound, parsed=replace(parsed, defects=(*parsed.defects, note)))
            parsed = inbound.parsed

        is_staff = inbound.verdict.kind == VerdictKind.STAFF
        query = ThreadQuery(
            parsed=parsed,
            recipients=tuple(inbound.recipients),
            is_staff=is_staff,
            panel_account=inbound.panel.get("account"),
            panel_case_number=inbound.panel.get("case"),
        )
        decision = decide(
            session=session,
            query=query,
            replies=self._addresses,
            reopen_window=timedelta(days=self._settings.reopen_window_days),
            now=utcnow(),
        )
        if decision.case is None and has_thread_hints(parsed) and self._older_pending(session, entry.id or 0):
            # It answers something we cannot find yet, and mail acknowledged before it is still
            # being processed (by another instance, perhaps): wait for that rather than split.
            raise Deferred("waiting for earlier messages of the thread")
        if inbound.verdict.automatic and decision.case is None and decision.follows_case is not None:
            # A bounce or an out-of-office about an old closed case is not a new request: keep it
            # with that case (automatic mail never changes a case's status) instead of opening one.
            decision = replace(decision, case=decision.follows_case, follows_case=None)
        inbound, decision = self._gate.judge(session, inbound, decision)  # events, spam, participants, auto-replies
        if (
            is_staff
            and decision.case is not None
            and self._gate.staff_reply_authentic(inbound, decision)  # SMTP AUTH as that From, or DMARC pass
        ):
            self._staff.apply(session, inbound, decision.case)
            finished.case_id = decision.case.id
            return finished
        case = decision.case
        is_new = case is None
        if case is None:
            case = self._recorder.open_case(session, inbound, decision)
        # Staff mail that is not a proper staff reply is kept as an internal note, never sent on.
        direction = Direction.NOTE if is_staff else Direction.INBOUND
        message = self._recorder.store_message(session, inbound, case, direction=direction)
        refused = [a for a in self._recorder.store_attachments(session, inbound, message) if a.refused]
        self._recorder.touch_case(session, inbound, case)
        self._gate.after_store(session, inbound, case, is_new=is_new)  # spam status, unverified staff
        if inbound.verdict.kind == VerdictKind.BOUNCE:
            self._mail.note_bounce(session, inbound)
        self._mail.after_customer_message(
            session, inbound, case, is_new=is_new, stranger=decision.refused_case is not None, refused=refused
        )
        finished.case_id = case.id
        return finished


class PipelineRunner:
    """Feeds journaled entries to the pipeline, one at a time and in order, off the event loop.

    Acknowledging is what senders wait for, and the pipeline competes with it for the one
    interpreter: while mail is arriving, processing steps aside, but never lets the oldest
    waiting entry get more than `max_lag` seconds old.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        on_done: Callable[[], None],
        max_lag: float,
        arriving: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pipeline = pipeline
        self._on_done = on_done
        self._max_lag = max_lag
        self.arriving = arriving
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: dict[int, float] = {}  # journal id -> loop time it was submitted
        self.processed = 0

    def submit(self, journal_ids: list[int]) -> None:
        now = asyncio.get_running_loop().time()
        for journal_id in journal_ids:
            if journal_id not in self._queued:
                self._queued[journal_id] = now
                self._queue.put_nowait(journal_id)

    async def _step_aside(self, journal_id: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._queued.get(journal_id, loop.time()) + self._max_lag
        while self.arriving() and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        while True:
            journal_id = await self._queue.get()
            await self._step_aside(journal_id)
            try:
                outcome = await asyncio.to_thread(self._pipeline.process, journal_id)
            finally:
                self._queued.pop(journal_id, None)
            self.processed += 1
            if outcome == Outcome.DONE:
                self._on_done()
            elif outcome == Outcome.DEFERRED:
                # Earlier mail of its thread is still in flight, or the database is away.
                asyncio.get_running_loop().call_later(DEFER_SECONDS, self.submit, [journal_id])

    @property
    def backlog(self) -> int:
        return self._queue.qsize()
