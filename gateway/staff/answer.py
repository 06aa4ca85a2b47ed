"""A staff reply applied to its case: commands, an internal note, or an answer sent to the customer.

Called by the pipeline inside its transaction once threading has accepted the message as a staff
reply (a signed staff reply address, or a staff address on an authenticated submission).
"""

from __future__ import annotations

from sqlmodel import Session

from gateway.outbound.choose import MailChoice
from gateway.outbound.replies import outbound_message
from gateway.record import Inbound, Recorder
from gateway.staff.reply import read_staff_reply
from store.models import Case, utcnow
from store.states import CaseStatus, Direction


class StaffAnswers:
    def __init__(self, *, recorder: Recorder, mail: MailChoice) -> None:
        self._recorder = recorder
        self._mail = mail

    def apply(self, session: Session, inbound: Inbound, case: Case) -> None:
        reply = read_staff_reply(inbound.parsed.text)
        now = utcnow()
        if reply.category:
            case.category = reply.category
        if reply.note or not reply.body:
            # The staff member's own lines as its text, not the quoted notification.
            note = self._recorder.store_message(session, inbound, case, direction=Direction.NOTE, text=reply.text)
            self._recorder.store_attachments(session, inbound, note)
        if not reply.note and reply.body:
            self._send_answer(session, inbound, case, reply.body)
            case.status = CaseStatus.ANSWERED
        if reply.reopen:
            case.status, case.closed_at = CaseStatus.OPEN, None
        if reply.close:
            if not reply.body and not reply.note:
                self._mail.to_customer(session, case, "closed", {"by_staff": True, "idle_days": 0})
            case.status, case.closed_at = CaseStatus.CLOSED, now
        case.updated_at = now
        session.add(case)

    def _send_answer(self, session: Session, inbound: Inbound, case: Case, body: str) -> None:
        outbox_id = self._mail.to_customer(
            session,
            case,
            "staff_reply",
            {"body": body, "staff_name": inbound.parsed.from_name},
            attachments=self._mail.forwardable(inbound.parsed.attachments),
        )
        answer = outbound_message(session=session, outbox_id=outbox_id) if outbox_id else None
        if answer is not None:
            # The case keeps the staff member's files with the answer (the panel shows them);
            # one over the limit is recorded as refused, as it was not sent either.
            self._recorder.store_attachments(session, inbound, answer.id or 0)
