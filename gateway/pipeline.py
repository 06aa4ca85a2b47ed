"""process(): one journal entry -> parse, classify, thread, store, replies; it owns the transaction.

Everything a message causes (its case, message and attachment rows, case changes, outbox rows, the
journal entry marked done) is committed together or not at all. An error rolls it all back and the
entry is quarantined with its reason, bytes intact, ready for `gateway quarantine retry`. A
database that cannot be reached is not the message's fault: the entry stays pending for replay.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import UTC, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from gateway.addresses import ReplyAddresses
from gateway.classify import MailFacts, Verdict, classify
from gateway.outbound.replies import Outgoing, OutgoingAttachment, Replies, conversation, outbound_message
from gateway.outbound.worker import mark_failed
from gateway.parse.message import DeliveryReport, ParsedAttachment, ParsedMessage, parse_message
from gateway.settings import Settings
from gateway.staff.reply import read_staff_reply
from gateway.threads import ThreadDecision, ThreadQuery, decide, subject_case_number
from store import cases, directory, journal, outbox, processed
from store.blobs import BlobStore
from store.db import reading, transaction
from store.models import (
    Attachment,
    Case,
    JournalEntry,
    Message,
    OutboxItem,
    ProcessedEntry,
    SecurityEvent,
    utcnow,
)

log = logging.getLogger(__name__)

_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|odp|pd|sv|vs|tr|rv)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_TAG = re.compile(r"\s*\[#\s*\d{4}-\d{6,}\s*\]\s*")


def clean_subject(subject: str) -> str:
    """The subject without reply/forward prefixes and case tags, for a new case's title."""
    previous = None
    while previous != subject:
        previous = subject
        subject = _TAG.sub(" ", _REPLY_PREFIX.sub("", subject)).strip()
    return subject


class Deferred(Exception):
    """Not now: the entry stays pending and is processed again shortly."""


def _has_thread_hints(parsed: ParsedMessage) -> bool:
    return bool(parsed.in_reply_to or parsed.references or subject_case_number(parsed.subject))


@dataclass(frozen=True)
class Inbound:
    """What the pipeline knows about one journal entry once it is parsed and classified."""

    entry: JournalEntry
    parsed: ParsedMessage
    verdict: Verdict
    panel: dict[str, str | None]  # the panel's verified identity, {} for mail

    @property
    def sender(self) -> str:
        return self.parsed.from_address

    @property
    def recipients(self) -> list[str]:
        envelope = [str(address).lower() for address in self.entry.meta.get("rcpt_tos", [])]
        return [*envelope, *self.parsed.to, *self.parsed.cc]


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
        self._blobs = blobs
        self._replies = replies
        self._addresses = addresses

    # --- transaction ownership -----------------------------------------------------------------

    def process(self, journal_id: int) -> str:
        """Process one entry; returns done | duplicate | skipped | quarantined | deferred."""
        try:
            with reading(self._journal) as session:
                entry = journal.get_entry(session=session, journal_id=journal_id)
            if entry is None or entry.status != "pending":
                return "skipped"
            parsed = parse_message(entry.raw)  # outside the write transaction: it can be slow
            with transaction(self._engine) as session:
                if self._shared_journal and not journal.claim_pending(session=session, journal_id=journal_id):
                    return "skipped"  # another instance has it right now
                finished = processed.get_processed(session=session, journal_id=journal_id)
                if finished is None:
                    finished = self._handle(session, self._inbound(entry, parsed))
                    processed.record_processed(session=session, entry=finished)
                # else: done before a crash that came between this commit and the journal's
                if self._shared_journal:
                    self._mark_journal(session, finished)
            if not self._shared_journal:
                with transaction(self._journal) as journal_session:
                    self._mark_journal(journal_session, finished)
            return finished.outcome
        except OperationalError as error:
            log.warning("journal entry %s deferred, database unavailable: %s", journal_id, error)
            return "deferred"
        except Deferred:
            return "deferred"
        except Exception as error:
            log.exception("journal entry %s quarantined", journal_id)
            self._quarantine(journal_id, f"{type(error).__name__}: {error}")
            return "quarantined"

    @staticmethod
    def _mark_journal(session: Session, finished: ProcessedEntry) -> None:
        reason = f"duplicate of #{finished.duplicate_of}" if finished.duplicate_of else None
        journal.finish(session=session, journal_id=finished.journal_id, status=finished.outcome, reason=reason)

    def _older_pending(self, session: Session, journal_id: int) -> bool:
        if self._shared_journal:
            return journal.has_older_pending(session=session, journal_id=journal_id)
        with reading(self._journal) as journal_session:
            return journal.has_older_pending(session=journal_session, journal_id=journal_id)

    def _quarantine(self, journal_id: int, reason: str) -> None:
        try:
            with transaction(self._journal) as session:
                journal.quarantine(session=session, journal_id=journal_id, reason=reason)
        except OperationalError as error:
            log.warning("could not quarantine entry %s (stays pending): %s", journal_id, error)

    def _inbound(self, entry: JournalEntry, parsed: ParsedMessage) -> Inbound:
        facts = MailFacts(
            parsed=parsed,
            mail_from=entry.meta.get("mail_from"),
            own_addresses=self._is_own_address,
            loop_marker=self._replies.loop_marker,
            is_staff=self._settings.is_staff,
        )
        panel = entry.meta.get("panel") or {}
        return Inbound(entry=entry, parsed=parsed, verdict=classify(facts), panel=panel)

    def _is_own_address(self, address: str) -> bool:
        address = address.lower()
        return self._addresses.is_ours(address) or address == self._settings.staff_queue_address.lower()

    # --- the decisions -------------------------------------------------------------------------

    def _handle(self, session: Session, inbound: Inbound) -> ProcessedEntry:
        entry, parsed = inbound.entry, inbound.parsed
        message_id = None if parsed.message_id_synthesised else parsed.message_id
        finished = ProcessedEntry(
            journal_id=entry.id or 0,
            outcome="done",
            raw_sha256=entry.raw_sha256,
            message_id=parsed.message_id,
            sender=inbound.sender,
        )
        original = processed.find_original(
            session=session, raw_sha256=entry.raw_sha256, message_id=message_id, sender=inbound.sender
        )
        if original is not None:
            finished.outcome, finished.case_id = "duplicate", original.case_id
            finished.duplicate_of = original.journal_id
            return finished
        if inbound.verdict.kind == "loop" and message_id is not None:
            ours = outbox.find_by_message_id(session=session, message_id=message_id)
            if ours is not None:
                # One of our own messages came back (a forwarding rule, a misconfigured MTA). The
                # case already holds it as sent; storing it again would open a case for ourselves.
                finished.outcome, finished.case_id = "duplicate", ours.case_id
                return finished

        is_staff = inbound.verdict.kind == "staff"
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
        if decision.case is None and _has_thread_hints(parsed) and self._older_pending(session, entry.id or 0):
            # It answers something we cannot find yet, and mail acknowledged before it is still
            # being processed (by another instance, perhaps): wait for that rather than split.
            raise Deferred("waiting for earlier messages of the thread")
        if inbound.verdict.automatic and decision.case is None and decision.follows_case is not None:
            # A bounce or an out-of-office about an old closed case is not a new request: keep it
            # with that case (automatic mail never changes a case's status) instead of opening one.
            decision = replace(decision, case=decision.follows_case, follows_case=None)
        if (
            is_staff
            and decision.case is not None
            and (decision.via == "staff_token" or entry.meta.get("authenticated"))
        ):
            self._staff_reply(session, inbound, decision.case)
            finished.case_id = decision.case.id
        else:
            finished.case_id = self._customer_message(session, inbound, decision).id
        return finished

    def _customer_message(self, session: Session, inbound: Inbound, decision: ThreadDecision) -> Case:
        parsed, verdict = inbound.parsed, inbound.verdict
        case = decision.case
        is_new = case is None
        if case is None:
            case = self._open_case(session, inbound, decision)
        # Staff mail that is not a proper staff reply is kept as an internal note, never sent on.
        direction = "note" if verdict.kind == "staff" else "inbound"
        message = self._store_inbound(session, inbound, case, direction=direction)
        refused = [a for a in self._attachments(session, inbound, message) if a.refused]
        self._update_case_after_inbound(session, inbound, case, decision)
        if verdict.kind == "bounce":
            self._record_bounce(session, inbound)
        if verdict.automatic or direction == "note" or inbound.entry.meta.get("quiet"):
            return case  # never answer automatic mail, internal notes, or imported old correspondence
        if decision.refused_case is not None:
            self._queue(session, case, inbound, "stranger_split", {})
        elif is_new:
            self._queue(session, case, inbound, "ack", {"received_subject": parsed.subject})
        if refused:
            self._queue_refused_notice(session, case, inbound, refused)
        self._notify_staff(session, case, inbound, is_new=is_new, refused=refused)
        return case

    def _open_case(self, session: Session, inbound: Inbound, decision: ThreadDecision) -> Case:
        parsed = inbound.parsed
        account_id = inbound.panel.get("account")
        if account_id is None and parsed.from_address:
            account = directory.account_for_address(session=session, email=parsed.from_address)
            account_id = account.id if account is not None else None
        account = directory.get_account(session=session, account_id=account_id) if account_id else None
        now = utcnow()
        case = Case(
            number=cases.next_case_number(session=session, year=now.year),
            subject=clean_subject(parsed.subject)[:1000] or "(bez tematu)",
            requester=parsed.from_address,
            requester_name=parsed.from_name,
            language=(account.language if account and account.language else self._settings.default_language),
            category=inbound.panel.get("category"),
            account_id=account_id,
            service_id=inbound.panel.get("service"),
            follows_case_id=decision.follows_case.id if decision.follows_case else None,
            created_at=now,
            updated_at=now,
        )
        session.add(case)
        session.flush()
        if decision.refused_case is not None:
            cases.record_security_event(
                session=session,
                event=SecurityEvent(
                    kind="foreign_case_reference",
                    sender=parsed.from_address,
                    target_case_id=decision.refused_case.id,
                    new_case_id=case.id,
                    journal_id=inbound.entry.id,
                    detail=f"referred to case {decision.refused_case.number} without being a participant",
                ),
            )
        return case

    def _store_inbound(self, session: Session, inbound: Inbound, case: Case, *, direction: str) -> Message:
        parsed, entry = inbound.parsed, inbound.entry
        message = Message(
            journal_id=entry.id,
            direction=direction,
            source="staff" if direction == "note" else _message_source(entry.source),
            message_id=parsed.message_id,
            sender=parsed.from_address,
            from_header=parsed.from_header,
            to_header=parsed.to_header,
            cc_header=parsed.cc_header,
            subject=parsed.subject,
            date=parsed.date.replace(tzinfo=UTC) if parsed.date else None,
            text=parsed.text,
            html=parsed.html,
            auto_generated=inbound.verdict.automatic,
            raw_sha256=entry.raw_sha256,
            defects=list(parsed.defects),
            received_at=entry.received_at,
        )
        cases.add_message(session=session, case=case, message=message)
        own = self._is_own_address
        cases.add_participants(
            session=session,
            case_id=case.id or 0,
            emails=[a for a in (parsed.from_address, *parsed.to, *parsed.cc) if a and not own(a)],
        )
        return message

    def _attachments(self, session: Session, inbound: Inbound, message: Message) -> list[Attachment]:
        stored = []
        for part in inbound.parsed.attachments:
            attachment = self._attachment_row(session, part, message_id=message.id or 0)
            cases.add_attachment(session=session, attachment=attachment)
            stored.append(attachment)
        return stored

    def _attachment_row(self, session: Session, part: ParsedAttachment, *, message_id: int) -> Attachment:
        limit = self._settings.max_attachment_bytes
        row = Attachment(
            message_id=message_id,
            filename=part.filename,
            content_type=part.content_type,
            size=part.size,
            content_id=part.content_id,
            inline=part.inline,
        )
        if part.size > limit:
            row.refused = True
            row.reason = f"attachment exceeds the limit of {limit} bytes ({part.size} bytes)"
        else:
            row.sha256 = self._blobs.put(session=session, content=part.content)
        return row

    def _update_case_after_inbound(
        self, session: Session, inbound: Inbound, case: Case, decision: ThreadDecision
    ) -> None:
        case.updated_at = utcnow()
        if not inbound.verdict.automatic and inbound.verdict.kind != "staff":
            if case.status != "open":
                case.closed_at = None
            case.status = "open"
        session.add(case)

    def _record_bounce(self, session: Session, inbound: Inbound) -> None:
        report = inbound.parsed.delivery_report
        if report is None or not report.original_message_id or not _reports_failure(report):
            return  # "delayed", "delivered", "relayed": the message may still arrive
        item = outbox.find_by_message_id(session=session, message_id=report.original_message_id)
        if item is None:
            return
        error = f"bounced: {report.status} {report.diagnostic}".strip()
        mark_failed(session=session, item=item, error=error, settings=self._settings, replies=self._replies)

    # --- staff replies -------------------------------------------------------------------------

    def _staff_reply(self, session: Session, inbound: Inbound, case: Case) -> None:
        reply = read_staff_reply(inbound.parsed.text)
        now = utcnow()
        if reply.category:
            case.category = reply.category
        if reply.note or not reply.body:
            note = self._store_inbound(session, inbound, case, direction="note")
            note.text = reply.text  # the staff member's own lines, not the quoted notification
            self._attachments(session, inbound, note)
        if not reply.note and reply.body:
            self._send_staff_answer(session, inbound, case, reply.body)
            case.status = "answered"
        if reply.reopen:
            case.status, case.closed_at = "open", None
        if reply.close:
            if not reply.body and not reply.note:
                self._to_customer(session, case, "closed", {"by_staff": True, "idle_days": 0})
            case.status, case.closed_at = "closed", now
        case.updated_at = now
        session.add(case)

    def _send_staff_answer(self, session: Session, inbound: Inbound, case: Case, body: str) -> None:
        item = self._to_customer(
            session,
            case,
            "staff_reply",
            {"body": body, "staff_name": inbound.parsed.from_name},
            attachments=self._forwardable(inbound.parsed.attachments),
        )
        answer = outbound_message(session=session, outbox_id=item.id or 0) if item else None
        if answer is not None:
            # The case keeps the staff member's files with the answer (the panel shows them);
            # one over the limit is recorded as refused, as it was not sent either.
            self._attachments(session, inbound, answer)

    def _to_customer(
        self,
        session: Session,
        case: Case,
        kind: str,
        context: dict[str, object],
        *,
        attachments: tuple[OutgoingAttachment, ...] = (),
    ) -> OutboxItem | None:
        """A staff-caused mail to the requester, threaded under the customer's side of the case.

        Not under the staff member's message: the customer never saw that one.
        """
        in_reply_to, references = conversation(session=session, case=case)
        return self._replies.queue(
            session=session,
            case=case,
            mail=Outgoing(
                kind=kind,
                recipient=case.requester,
                automatic=False,
                source="staff",
                context=context,
                in_reply_to=in_reply_to,
                references=references,
                attachments=attachments,
            ),
        )

    def _forwardable(self, parts: tuple[ParsedAttachment, ...]) -> tuple[OutgoingAttachment, ...]:
        limit = self._settings.max_attachment_bytes
        return tuple(
            OutgoingAttachment(filename=p.filename, content_type=p.content_type, content=p.content)
            for p in parts
            if p.size <= limit
        )

    # --- replies caused by a customer message --------------------------------------------------

    def _queue(
        self,
        session: Session,
        case: Case,
        inbound: Inbound,
        kind: str,
        context: dict[str, object],
        *,
        recipient: str | None = None,
        automatic: bool = True,
    ) -> None:
        recipient = recipient or inbound.sender
        if not recipient:
            return
        self._replies.queue(
            session=session,
            case=case,
            mail=Outgoing(
                kind=kind,
                recipient=recipient,
                automatic=automatic,
                context=context,
                in_reply_to=inbound.parsed.message_id,
                references=inbound.parsed.references,
            ),
        )

    def _queue_refused_notice(self, session: Session, case: Case, inbound: Inbound, refused: list[Attachment]) -> None:
        listed = [{"filename": a.filename, "size": a.size, "content_type": a.content_type} for a in refused]
        context = {"refused": listed, "limit_bytes": self._settings.max_attachment_bytes}
        self._queue(session, case, inbound, "attachment_refused", context)

    def _notify_staff(
        self, session: Session, case: Case, inbound: Inbound, *, is_new: bool, refused: list[Attachment]
    ) -> None:
        parsed = inbound.parsed
        forwarded = self._forwardable(parsed.attachments)
        self._replies.queue(
            session=session,
            case=case,
            mail=Outgoing(
                kind="notification",
                recipient=self._settings.staff_queue_address,
                automatic=True,
                to_staff=True,
                context={
                    "customer_address": parsed.from_address,
                    "body": parsed.text,
                    "attachments": [{"filename": a.filename, "size": len(a.content)} for a in forwarded],
                    "refused": [{"filename": a.filename, "size": a.size, "reason": a.reason} for a in refused],
                    "is_new_case": is_new,
                    "commands_help": True,
                },
                in_reply_to=parsed.message_id,
                references=parsed.references,
                attachments=forwarded,
            ),
        )


def _reports_failure(report: DeliveryReport) -> bool:
    # Some MTAs leave Action out; a permanent (5.x.x) status then says the same.
    return report.action == "failed" or (not report.action and report.status.startswith("5"))


def _message_source(journal_source: str) -> str:
    # Imported files were mail once; SPEC §2 knows the sources smtp|imap|panel|staff|system.
    return "smtp" if journal_source == "file" else journal_source
