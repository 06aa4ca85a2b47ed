"""Which outgoing mail an inbound message causes: acknowledgement, notices, staff notification, answers.

The pipeline (customer mail) and gateway.staff (staff replies) ask here; `Replies.queue` then renders
each mail into an outbox row in the same transaction. A bounce of our own mail marks that row failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session

from gateway.outbound.replies import Outgoing, OutgoingAttachment, Replies, conversation
from gateway.outbound.worker import mark_failed
from gateway.parse import DeliveryReport, ParsedAttachment
from gateway.record import Inbound
from gateway.settings import Settings
from gateway.trust.gate import number_only
from gateway.trust.verdict import AutoReply
from store import outbox
from store.models import Attachment, Case
from store.states import VerdictKind


class MailChoice:
    def __init__(self, *, settings: Settings, replies: Replies) -> None:
        self._settings = settings
        self._replies = replies

    @staticmethod
    def expect_senders(session: Session, senders: Sequence[str]) -> None:
        """A batch's senders, before its messages are processed: their hourly counts of automatic
        mail are read in one query instead of one per message."""
        outbox.AutomaticCounts.of(session).load([sender for sender in senders if sender])

    def after_customer_message(
        self,
        session: Session,
        inbound: Inbound,
        case: Case,
        *,
        is_new: bool,
        stranger: bool,
        refused: Sequence[Attachment],
    ) -> None:
        """What a customer's message (already stored in `case`) sends out.

        Never anything for automatic mail (RFC 3834) or imported old correspondence. A stranger who
        named someone else's case gets the split notice instead of an acknowledgement.
        """
        if inbound.verdict.automatic or inbound.verdict.kind == VerdictKind.STAFF or inbound.quiet:
            return
        if stranger:
            self._to_sender(session, case, inbound, "stranger_split", {})
        elif is_new:
            self._to_sender(session, case, inbound, "ack", {"received_subject": inbound.parsed.subject})
        # The sender's notice is about the size limit; parts a MIME budget left unpacked go to staff only.
        oversized = [a for a in refused if a.size > self._settings.max_attachment_bytes]
        if oversized:
            listed = [{"filename": a.filename, "size": a.size, "content_type": a.content_type} for a in oversized]
            context = {"refused": listed, "limit_bytes": self._settings.max_attachment_bytes}
            self._to_sender(session, case, inbound, "attachment_refused", context)
        self._notify_staff(session, case, inbound, is_new=is_new, refused=refused)

    def to_customer(
        self,
        session: Session,
        case: Case,
        kind: str,
        context: dict[str, object],
        *,
        attachments: tuple[OutgoingAttachment, ...] = (),
    ) -> int | None:
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

    def forwardable(self, parts: Sequence[ParsedAttachment]) -> tuple[OutgoingAttachment, ...]:
        """The attachments that may travel on (within the per-attachment limit)."""
        limit = self._settings.max_attachment_bytes
        return tuple(
            OutgoingAttachment(filename=p.filename, content_type=p.content_type, content=p.content)
            for p in parts
            if p.size <= limit
        )

    def note_bounce(self, session: Session, inbound: Inbound) -> None:
        """A delivery report about one of our messages marks that outbox row failed (and tells staff)."""
        report = inbound.parsed.delivery_report
        if report is None or not report.original_message_id or not _reports_failure(report):
            return  # "delayed", "delivered", "relayed": the message may still arrive
        item = outbox.find_by_message_id(session=session, message_id=report.original_message_id)
        if item is None:
            return
        error = f"bounced: {report.status} {report.diagnostic}".strip()
        mark_failed(session=session, item=item, error=error, settings=self._settings, replies=self._replies)

    def _to_sender(self, session: Session, case: Case, inbound: Inbound, kind: str, context: dict[str, Any]) -> None:
        if not inbound.sender or inbound.auto_reply == AutoReply.NONE:
            return  # gateway.trust.gate.judge: spam, a failed sender, the policy or the global cap
        if inbound.auto_reply == AutoReply.NUMBER_ONLY:
            kind, context = number_only(kind, context)  # nothing of an unproven sender's goes back
        self._replies.queue_later(
            session=session,
            case=case,
            mail=Outgoing(
                kind=kind,
                recipient=inbound.sender,
                automatic=True,
                context=context,
                in_reply_to=inbound.parsed.message_id,
                references=inbound.parsed.references,
            ),
        )

    def _notify_staff(
        self, session: Session, case: Case, inbound: Inbound, *, is_new: bool, refused: Sequence[Attachment]
    ) -> None:
        parsed = inbound.parsed
        forwarded = self.forwardable(parsed.attachments)
        self._replies.queue_later(
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
                    "sender_trust": inbound.trust.summary(),
                },
                in_reply_to=parsed.message_id,
                references=parsed.references,
                attachments=forwarded,
            ),
        )


def _reports_failure(report: DeliveryReport) -> bool:
    # Some MTAs leave Action out; a permanent (5.x.x) status then says the same.
    return report.action == "failed" or (not report.action and report.status.startswith("5"))
