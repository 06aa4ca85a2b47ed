"""The rows one inbound message creates: its case (when it opens one), message, attachments, participants.

Called by the pipeline inside its transaction; nothing here commits or decides what mail to send.
`Inbound` is what every later step knows about one journal entry once it is parsed and classified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlmodel import Session

from gateway.casetag import clean_subject
from gateway.classify import Verdict
from gateway.parse import ParsedAttachment, ParsedMessage
from gateway.settings import Settings
from gateway.threads import ThreadDecision
from gateway.trust.verdict import AutoReply, TrustVerdict
from store import cases, directory
from store.blobs import BlobStore
from store.models import Account, Attachment, Case, JournalEntry, SecurityEvent, utcnow
from store.rows import insert_object
from store.states import CaseStatus, Direction, VerdictKind

NO_SUBJECT = "(bez tematu)"
_ACCOUNTS = "accounts_by_address"  # session.info: the batch's senders' accounts


@dataclass(frozen=True)
class Inbound:
    """What the pipeline knows about one journal entry once it is parsed and classified."""

    entry: JournalEntry
    parsed: ParsedMessage
    verdict: Verdict
    panel: dict[str, Any]  # the panel's verified identity, {} for mail
    trust: TrustVerdict = field(default_factory=TrustVerdict)  # who really sent it (gateway.trust)
    # Set by gateway.trust.gate.judge: only proven mail adds participants; what automatic mail goes back.
    adds_participants: bool = True
    auto_reply: AutoReply = AutoReply.FULL

    @property
    def sender(self) -> str:
        return self.parsed.from_address

    @property
    def recipients(self) -> list[str]:
        envelope = [str(address).lower() for address in self.entry.meta.get("rcpt_tos", [])]
        return [*envelope, *self.parsed.to, *self.parsed.cc]

    @property
    def quiet(self) -> bool:
        """Imported old correspondence (`gateway ingest` without --notify): stored, never answered."""
        return bool(self.entry.meta.get("quiet"))


class Recorder:
    """Writes the rows of an inbound message into the caller's transaction."""

    def __init__(self, *, settings: Settings, blobs: BlobStore, is_own_address: Callable[[str], bool]) -> None:
        self._settings = settings
        self._blobs = blobs
        self._is_own_address = is_own_address

    @staticmethod
    def expect_senders(session: Session, senders: list[str]) -> None:
        """A batch's senders, before its messages are processed: their accounts in one query."""
        session.info[_ACCOUNTS] = directory.accounts_for_addresses(session=session, emails=senders)

    @staticmethod
    def _account_of(session: Session, address: str) -> Account | None:
        known: dict[str, Account | None] = session.info.get(_ACCOUNTS, {})
        if address.lower() in known:
            return known[address.lower()]
        return directory.account_for_address(session=session, email=address)

    def open_case(self, session: Session, inbound: Inbound, decision: ThreadDecision) -> Case:
        parsed = inbound.parsed
        account_id = inbound.panel.get("account")
        if account_id is None and parsed.from_address:
            account = self._account_of(session, parsed.from_address)
            account_id = account.id if account is not None else None
        account = directory.get_account(session=session, account_id=account_id) if account_id else None
        now = utcnow()
        # A Core insert, then the row as an ORM object (the pipeline goes on changing the case):
        # cheaper than flushing the session to learn its id, or loading it back.
        case = insert_object(
            session,
            Case,
            {
                "number": cases.next_case_number(session=session, year=now.year),
                "subject": clean_subject(parsed.subject)[:1000] or NO_SUBJECT,
                "requester": parsed.from_address,
                "requester_name": parsed.from_name,
                "language": account.language if account and account.language else self._settings.default_language,
                "category": inbound.panel.get("category"),
                "account_id": account_id,
                "service_id": inbound.panel.get("service"),
                "follows_case_id": decision.follows_case.id if decision.follows_case else None,
                "created_at": now,
                "updated_at": now,
            },
        )
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

    def store_message(
        self, session: Session, inbound: Inbound, case: Case, *, direction: Direction, text: str | None = None
    ) -> int:
        """The case message (with `text` instead of the parsed one, if given), and everyone on its
        From/To/Cc (but us) as participants of the case; returns the message's id."""
        parsed, entry = inbound.parsed, inbound.entry
        message_id = cases.add_message(
            session=session,
            case=case,
            values={
                "journal_id": entry.id,
                "direction": direction,
                "source": "staff" if direction == Direction.NOTE else _message_source(entry.source),
                "message_id": parsed.message_id,
                "sender": parsed.from_address,
                "from_header": parsed.from_header,
                "to_header": parsed.to_header,
                "cc_header": parsed.cc_header,
                "subject": parsed.subject,
                "date": parsed.date.replace(tzinfo=UTC) if parsed.date else None,
                "text": parsed.text if text is None else text,
                "html": parsed.html,
                "auto_generated": inbound.verdict.automatic,
                "raw_sha256": entry.raw_sha256,
                "defects": list(parsed.defects),
                "trust": inbound.trust.as_json(),
                "received_at": entry.received_at,
            },
        )
        own = self._is_own_address
        cases.add_participants(
            session=session,
            case_id=case.id or 0,
            emails=[a for a in (parsed.from_address, *parsed.to, *parsed.cc) if a and not own(a)]
            if inbound.adds_participants
            else [],
            new_case=case.message_count == 1,  # this message is its first
        )
        return message_id

    def store_attachments(self, session: Session, inbound: Inbound, message_id: int) -> list[Attachment]:
        """One row per attachment; contents by SHA-256, one over the limit recorded as refused."""
        stored = []
        for part in inbound.parsed.attachments:
            attachment = self._attachment_row(session, part, message_id=message_id)
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
        if part.refused_reason:  # parts a MIME budget left unpacked: recorded, never stored
            row.refused, row.reason = True, part.refused_reason
        elif part.size > limit:
            row.refused = True
            row.reason = f"attachment exceeds the limit of {limit} bytes ({part.size} bytes)"
        else:
            row.sha256 = self._blobs.put(session=session, content=part.content)
        return row

    @staticmethod
    def touch_case(session: Session, inbound: Inbound, case: Case) -> None:
        """A customer writing (again) makes the case open; automatic mail and notes never change it."""
        case.updated_at = utcnow()
        if not inbound.verdict.automatic and inbound.verdict.kind != VerdictKind.STAFF:
            if case.status != CaseStatus.OPEN:
                case.closed_at = None
            case.status = CaseStatus.OPEN
        session.add(case)


def _message_source(journal_source: str) -> str:
    # Imported files were mail once; SPEC §2 knows the sources smtp|imap|panel|staff|system.
    return "smtp" if journal_source == "file" else journal_source
