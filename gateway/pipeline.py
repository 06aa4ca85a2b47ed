"""process(): one journal entry -> parse, classify, thread, record, mail; it owns the transaction.

Everything a message causes (its case, message and attachment rows, case changes, outbox rows, the
journal entry marked done) is committed together or not at all. An error rolls it all back and the
entry is quarantined with its reason, bytes intact, ready for `gateway quarantine retry`. A
database that cannot be reached is not the message's fault: the entry stays pending for replay.
Entries are processed in batches, one transaction each, sharing a commit and the lookups every
entry makes (asked once per batch); when an entry fails, the batch is rolled back and done again
with a savepoint per entry, so the failing entry is quarantined alone. Here live
the transaction, de-duplication, deferral and quarantine; gateway.runner feeds entries in; the
rows are gateway.record's, staff replies gateway.staff's, the mail to send gateway.outbound.choose's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from gateway.addresses import ReplyAddresses
from gateway.classify import MailFacts, classify
from gateway.metrics import PROCESSED, PROCESSING_TIME, QUARANTINED
from gateway.outbound.choose import MailChoice
from gateway.outbound.replies import Replies
from gateway.parse import ParseBudget, ParsedMessage, parse_message
from gateway.parse_pool import ParsePool
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
from store.rows import LaterRows, new_object
from store.states import Direction, JournalStatus, Outcome, VerdictKind
from store.text import storable_value

log = logging.getLogger(__name__)


class Deferred(Exception):
    """Not now: the entry stays pending and is processed again shortly."""


class _EntryFailed(Exception):
    """An entry of a batch processed without savepoints failed: the batch goes again, isolated."""


@dataclass(frozen=True)
class _BatchLookups:
    done_before: dict[int, ProcessedEntry]
    earlier: processed.BatchEarlier


def _journal_finish(done: ProcessedEntry) -> journal.Finished:
    reason = f"duplicate of #{done.duplicate_of}" if done.duplicate_of else None
    return journal.Finished(journal_id=done.journal_id, status=JournalStatus(done.outcome), reason=reason)


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
        # What one message may cost the parser (SPEC §13), from settings.
        self._parse_budget = ParseBudget(
            max_parts=settings.mime_max_parts,
            max_depth=settings.mime_max_depth,
            max_headers=settings.mime_max_headers,
            max_header_bytes=settings.mime_max_header_bytes,
            max_defects=settings.mime_max_defects,
            max_container_output_bytes=settings.mime_max_container_output_bytes,
            max_processing_seconds=settings.mime_max_processing_seconds,
        )
        # Parsing on the other cores (gateway.parse_pool); 0 workers: everything in-process.
        self.parse_pool = ParsePool(
            workers=settings.pipeline_parse_workers,
            budget=self._parse_budget,
            max_entry_bytes=settings.pipeline_parse_pool_max_entry_bytes,
        )

    def close(self) -> None:
        """Stop the parse pool's children (the gateway stops, `gateway ingest` ends)."""
        self.parse_pool.close()

    # --- transaction ownership -----------------------------------------------------------------

    def process(self, journal_id: int) -> Outcome:
        """Process one entry; returns what it came to."""
        return self.process_batch([journal_id]).get(journal_id, Outcome.DEFERRED)

    def process_batch(self, journal_ids: Sequence[int], *, parse_next: Sequence[int] = ()) -> dict[int, Outcome]:
        """Process entries together, oldest first, in one transaction with a savepoint per entry.

        Returns an outcome per entry taken; an id missing from the result was left for a later
        batch (a budget was reached) and is still pending. Each outcome is counted in the metrics.
        `parse_next` are the entries of the batch to come: the pool parses them meanwhile.
        """
        started = time.perf_counter()
        outcomes = self._process_batch(
            journal_ids, parse_next, deadline=started + self._settings.pipeline_batch_max_seconds
        )
        worked = [outcome for outcome in outcomes.values() if outcome != Outcome.SKIPPED]
        for outcome in worked:
            PROCESSED.labels(outcome=outcome.value).inc()
            PROCESSING_TIME.observe((time.perf_counter() - started) / len(worked))
            if outcome == Outcome.QUARANTINED:
                QUARANTINED.inc()
        return outcomes

    def _process_batch(
        self, journal_ids: Sequence[int], parse_next: Sequence[int], *, deadline: float
    ) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        try:
            entries = self._take(journal_ids, outcomes)
        except OperationalError as error:
            log.warning("journal entries %s deferred, database unavailable: %s", list(journal_ids), error)
            return dict.fromkeys(journal_ids, Outcome.DEFERRED)
        self.parse_pool.share(entries)  # the pool parses its share of what it does not have yet
        if parse_next:  # after this batch's share: the pool works first in, first out
            self.parse_pool.parse_ahead(journal_engine=self._journal, journal_ids=parse_next)
        works: list[Inbound] = []
        left: list[int] = []  # not parsed in time: the rest waits for the next batch
        for entry in entries:
            journal_id = entry.id or 0
            if left or (works and time.perf_counter() > deadline):
                left.append(journal_id)
                continue
            try:
                works.append(self._prepare(entry))
            except Exception as error:  # parse_message never raises; a bug in a later step may
                log.exception("journal entry %s quarantined", journal_id)
                outcomes[journal_id] = self._quarantine(journal_id, f"{type(error).__name__}: {error}")
        if works:
            outcomes.update(self._store(works))
        attempted = {entry.id for entry in entries}
        unfinished = [i for i, o in outcomes.items() if o in (Outcome.DEFERRED, Outcome.SKIPPED) and i in attempted]
        self._undo_attempts(left + unfinished)
        # Results parsed ahead for entries this batch settled without parsing (done elsewhere,
        # quarantined as poison) would never be taken.
        self.parse_pool.forget([i for i in outcomes if i not in attempted])
        return outcomes

    def _take(self, journal_ids: Sequence[int], outcomes: dict[int, Outcome]) -> list[JournalEntry]:
        """Plan the batch within its budgets, quarantine poison, and record an attempt at each entry
        (committed before any work starts, so a crash in the middle is on record)."""
        attempted: list[int] = []
        with reading(self._journal) as session:
            heads = journal.pending_heads(session=session, journal_ids=journal_ids)
        pending = {head.id for head in heads}
        outcomes.update({i: Outcome.SKIPPED for i in journal_ids if i not in pending})
        chosen: list[int] = []
        size = 0
        for head in heads:
            if head.attempts >= self._settings.poison_max_attempts:
                # Every earlier attempt started and none finished: each one took the process down
                # with it (or was killed). Trying again would only do that again, at every start.
                reason = f"processing did not finish in {head.attempts} attempts; the process may have died"
                log.error("journal entry %s quarantined: %s", head.id, reason)
                outcomes[head.id] = self._quarantine(head.id, reason)
                continue
            # An entry whose last attempt did not finish goes alone: if it is what kills the
            # process, it must not take the attempts of a whole batch with it.
            suspect = head.attempts > 0
            if chosen and (suspect or size + head.size > self._settings.pipeline_batch_max_bytes):
                break
            chosen.append(head.id)
            size += head.size
            if suspect or len(chosen) >= self._settings.pipeline_batch_max_entries:
                break
        with transaction(self._journal) as session:
            begun = journal.begin_attempts(session=session, journal_ids=chosen)
        for journal_id in chosen:
            if journal_id in begun:
                attempted.append(journal_id)
            else:
                outcomes[journal_id] = Outcome.SKIPPED
        with reading(self._journal) as session:
            return journal.get_entries(session=session, journal_ids=attempted)

    def _prepare(self, entry: JournalEntry) -> Inbound:
        """Parse and judge one entry, outside the write transaction (parsing and DNS can be slow)."""
        # The row keeps the envelope as received; what the steps read from it must be storable
        # (a NUL in MAIL FROM must not quarantine the message on PostgreSQL). In memory only.
        entry.meta = storable_value(entry.meta)
        # The envelope sender is the requester's last resort when no header names a usable address.
        # Parsed in the pool if it was handed over in time and its child delivered; else here.
        parsed = self.parse_pool.take(entry.id or 0) or parse_message(
            entry.raw, envelope_sender=entry.meta.get("mail_from"), budget=self._parse_budget
        )
        trust, parsed = self._gate.assess(entry, parsed)
        return self._inbound(entry, parsed, trust)

    def _store(self, works: list[Inbound]) -> dict[int, Outcome]:
        try:
            return self._store_batch(works, isolated=False)
        except _EntryFailed:
            # One entry failed, and the whole transaction went back with it: again, each entry in
            # a savepoint of its own this time, so that the failure stays with its entry.
            return self._store_batch(works, isolated=True)

    def _store_batch(self, works: list[Inbound], *, isolated: bool) -> dict[int, Outcome]:
        """The batch in one transaction. Not `isolated`: no savepoints (a savepoint per entry cost
        about a tenth of the pipeline), and the first entry that fails raises _EntryFailed."""
        outcomes: dict[int, Outcome] = {}
        finished: list[ProcessedEntry] = []
        failed: dict[int, str] = {}
        try:
            # No autoflush: the rows an entry adds go in at once (store.rows) and queries find the
            # cases it changed in the session; the changes to cases are written together at commit.
            with transaction(self._engine) as session, session.no_autoflush:
                # Outbox rows, the case messages that carry them and processed records: one INSERT
                # per table for the batch (store.rows.LaterRows).
                later = LaterRows.begin(session)
                ids = [work.entry.id or 0 for work in works]
                # PostgreSQL: rows another instance is processing right now are skipped, not awaited.
                claimed = (
                    journal.claim_pending_batch(session=session, journal_ids=ids) if self._shared_journal else set(ids)
                )
                batch = self._batch_lookups(session, works, ids)
                for work in works:
                    journal_id = work.entry.id or 0
                    if journal_id not in claimed:
                        outcomes[journal_id] = Outcome.SKIPPED
                        continue
                    try:
                        done = (
                            self._finish_isolated(session, work, batch, later)
                            if isolated
                            else self._finish(session, work, batch)
                        )
                    except Deferred:  # raised before the entry wrote anything
                        outcomes[journal_id] = Outcome.DEFERRED
                        continue
                    except OperationalError:
                        raise  # the database, not the message: the whole batch waits
                    except Exception as error:
                        if not isolated:
                            raise _EntryFailed(journal_id) from error
                        log.exception("journal entry %s quarantined", journal_id)
                        failed[journal_id] = f"{type(error).__name__}: {error}"
                        continue
                    finished.append(done)
                    batch.earlier.remember(done)
                    outcomes[journal_id] = Outcome(done.outcome)
                try:
                    later.flush(session)  # isolated: each entry's went in with it
                except OperationalError:
                    raise
                except Exception as error:  # some entry's row, which one is not known: each alone
                    raise _EntryFailed(None) from error
                if self._shared_journal:
                    journal.finish_many(session=session, finished=[_journal_finish(done) for done in finished])
                    for journal_id, reason in failed.items():
                        journal.quarantine(session=session, journal_id=journal_id, reason=reason)
        except OperationalError as error:
            log.warning("journal entries %s deferred, database unavailable: %s", [w.entry.id for w in works], error)
            return {work.entry.id or 0: Outcome.DEFERRED for work in works}
        if not self._shared_journal:
            try:
                with transaction(self._journal) as journal_session:
                    journal.finish_many(session=journal_session, finished=[_journal_finish(done) for done in finished])
            except OperationalError as error:  # processed_entry has them: they are marked at replay
                log.warning("journal not marked yet, entries stay pending: %s", error)
            for journal_id, reason in failed.items():
                self._quarantine(journal_id, reason)
        outcomes.update(dict.fromkeys(failed, Outcome.QUARANTINED))
        return outcomes

    def _batch_lookups(self, session: Session, works: list[Inbound], ids: list[int]) -> _BatchLookups:
        """What every entry of the batch asks the database, asked once for all of them."""
        senders = [work.sender for work in works]
        self._mail.expect_senders(session, senders)  # hourly counts of automatic mail
        self._recorder.expect_senders(session, senders)  # their accounts
        lookups = [
            processed.Lookup(
                raw_sha256=work.entry.raw_sha256,
                message_id=None if work.parsed.message_id_synthesised else work.parsed.message_id,
                sender=work.sender,
            )
            for work in works
        ]
        return _BatchLookups(
            # Done before a crash that came between this commit and the journal's.
            done_before=processed.get_many(session=session, journal_ids=ids),
            earlier=processed.BatchEarlier(session=session, lookups=lookups),
        )

    def _finish_isolated(
        self, session: Session, work: Inbound, batch: _BatchLookups, later: LaterRows
    ) -> ProcessedEntry:
        with session.begin_nested():  # this entry alone is undone if it fails
            done = self._finish(session, work, batch)  # if it fails, its waiting rows go too (store.rows)
            later.flush(session)  # inside the savepoint: its rows fail with it
            return done

    def _finish(self, session: Session, inbound: Inbound, batch: _BatchLookups) -> ProcessedEntry:
        done = batch.done_before.get(inbound.entry.id or 0)
        if done is None:
            done = self._handle(session, inbound, batch.earlier)
            processed.record_processed(session=session, entry=done)
        return done

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

    def _undo_attempts(self, journal_ids: list[int]) -> None:
        """Take back attempts that ended with the entry pending on purpose (deferred, skipped, left
        for the next batch): they finished, so they are not what the poison limit counts."""
        if not journal_ids:
            return
        try:
            with transaction(self._journal) as session:
                for journal_id in journal_ids:
                    journal.undo_attempt(session=session, journal_id=journal_id)
        except OperationalError as error:  # the count stays one too high; the limit leaves room for that
            log.warning("could not take back the attempts at entries %s: %s", journal_ids, error)

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
        return self._addresses.is_own_address(address)  # ours, and the staff queue (gateway.addresses)

    # --- the decisions -------------------------------------------------------------------------

    def _handle(self, session: Session, inbound: Inbound, batch_earlier: processed.BatchEarlier) -> ProcessedEntry:
        entry, parsed = inbound.entry, inbound.parsed
        message_id = None if parsed.message_id_synthesised else parsed.message_id
        finished = new_object(
            ProcessedEntry,
            {
                "journal_id": entry.id or 0,
                "outcome": Outcome.DONE,
                "raw_sha256": entry.raw_sha256,
                "message_id": parsed.message_id,
                "sender": inbound.sender,
                "content_digest": parsed.content_digest,
            },
        )
        earlier = batch_earlier.find(
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
        stored_id = self._recorder.store_message(session, inbound, case, direction=direction)
        refused = [a for a in self._recorder.store_attachments(session, inbound, stored_id) if a.refused]
        self._recorder.touch_case(session, inbound, case)
        self._gate.after_store(session, inbound, case, is_new=is_new)  # spam status, unverified staff
        if inbound.verdict.kind == VerdictKind.BOUNCE:
            self._mail.note_bounce(session, inbound)
        self._mail.after_customer_message(
            session, inbound, case, is_new=is_new, stranger=decision.refused_case is not None, refused=refused
        )
        finished.case_id = case.id
        return finished
