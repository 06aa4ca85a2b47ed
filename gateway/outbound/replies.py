"""Outgoing mail: render a template, give it the headers of SPEC §6, and put it in the outbox.

Every outgoing message is composed here and only here, so each one gets its own Message-ID
(unguessable, from `secrets`, stored before sending), a signed envelope sender bound to that
Message-ID (VERP, `support+b-<mac>@domain`: where its bounces must arrive), In-Reply-To/References
of the conversation, the `[#NUMBER]` subject tag, a signed Reply-To, the loop marker, and on
automatic mail Auto-Submitted and X-Auto-Response-Suppress. Attachments are referred to by the
blob they are stored as (compose.py), never copied into the row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from sqlmodel import Session, select

from gateway.addresses import ReplyAddresses
from gateway.casetag import tagged_subject
from gateway.classify import LOOP_HEADER
from gateway.outbound.compose import AttachmentRef, address_header, compose, encoded_text, new_message_id
from gateway.outbound.templates import MailTemplates
from gateway.settings import Settings
from store import cases, outbox
from store.blobs import BlobStore, make_blob_store
from store.models import Case, Message, utcnow
from store.rows import LaterRows

MAX_REFERENCES = 20  # keep References from growing without bound in long threads


@dataclass(frozen=True)
class OutgoingAttachment:
    """A file to send along. The outbox row refers to it by SHA-256 and never holds a copy: when
    `sha256` is not given, the content is stored as a blob first (identical files share one)."""

    filename: str
    content_type: str
    content: bytes = field(default=b"", repr=False)
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Outgoing:
    """One mail to send, before rendering."""

    kind: str  # the template
    recipient: str
    automatic: bool
    context: Mapping[str, Any]
    in_reply_to: str | None = None  # Message-ID (no brackets) of the message this answers
    references: Sequence[str] = ()
    to_staff: bool = False  # Reply-To is the staff reply address, and it is not a case message
    attachments: Sequence[OutgoingAttachment] = field(default_factory=tuple)
    source: str = "system"  # system | staff: how the stored case message is labelled


def _reference_chain(mail: Outgoing) -> list[str]:
    chain = list(dict.fromkeys(mid for mid in (*mail.references, mail.in_reply_to) if mid))
    if len(chain) > MAX_REFERENCES:
        # RFC 5322 §3.6.4: keep the first (the thread's root, which clients thread by) and the latest.
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return chain


def conversation(*, session: Session, case: Case, answer_latest: bool = False) -> tuple[str | None, tuple[str, ...]]:
    """(In-Reply-To, References) for a new mail to the customer of `case`.

    It answers the customer's latest own message (with `answer_latest`, or when they have none,
    the latest message they have seen, ours included); the references are what the customer has
    seen of the case up to it, oldest first. Notes, automatic mail that reached us and staff
    messages are not part of the customer's thread.
    """
    seen = [
        message
        for message in cases.case_messages(session=session, case_id=case.id or 0)
        if message.direction == "outbound" or (message.direction == "inbound" and not message.auto_generated)
    ]
    latest = seen[-1] if seen else None
    parent = latest if answer_latest else next((m for m in reversed(seen) if m.direction == "inbound"), latest)
    if parent is None:
        return None, ()
    before = seen[: seen.index(parent)]
    return parent.message_id, tuple(message.message_id for message in before)


def outbound_message(*, session: Session, outbox_id: int) -> Message | None:
    """The case message that carries outbox row `outbox_id` (None for mail to staff)."""
    return session.exec(select(Message).where(Message.outbox_id == outbox_id)).first()


class Replies:
    def __init__(
        self,
        *,
        settings: Settings,
        templates: MailTemplates,
        addresses: ReplyAddresses,
        blobs: BlobStore | None = None,
    ) -> None:
        self._settings = settings
        self._templates = templates
        self._addresses = addresses
        self._blobs = blobs or make_blob_store(settings.blob_store, settings.data_dir)

    @property
    def loop_marker(self) -> str:
        return self._settings.support_address.lower()

    def queue(self, *, session: Session, case: Case, mail: Outgoing) -> int | None:
        """Render `mail` and commit it to the outbox in the caller's transaction; returns the
        outbox row's id. Automatic mail beyond the per-sender hourly limit is not queued (None).
        """
        rows = self._rows(session=session, case=case, mail=mail)
        if rows is None:
            return None
        outbox_values, message_values = rows
        outbox_id = outbox.queue_row(session=session, values=outbox_values)
        if message_values is not None:
            cases.add_message(session=session, case=case, values={**message_values, "outbox_id": outbox_id})
        return outbox_id

    def queue_later(self, *, session: Session, case: Case, mail: Outgoing) -> bool:
        """`queue`, for a caller that needs no id: with `store.rows.LaterRows` in the session, the
        rows go in with the rest of the batch's (without it, at once). Returns whether the mail
        was queued."""
        if LaterRows.of(session) is None:
            return self.queue(session=session, case=case, mail=mail) is not None
        rows = self._rows(session=session, case=case, mail=mail)
        if rows is None:
            return False
        outbox_values, message_values = rows
        # The case message that carries it refers to the outbox row by id, so it goes in after it.
        carried_by = (
            None if message_values is None else cases.message_later(session=session, case=case, values=message_values)
        )
        outbox.queue_row_later(session=session, values=outbox_values, carried_by=carried_by)
        return True

    def _rows(
        self, *, session: Session, case: Case, mail: Outgoing
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """The outbox row of `mail` and, unless it goes to staff, the case message that carries it
        (without its outbox_id); None over the hourly limit."""
        if mail.automatic and not mail.to_staff and self._over_hourly_limit(session, mail.recipient):
            return None
        rendered = self._templates.render(mail.kind, language=case.language, context=self._context(case, mail))
        subject = tagged_subject(case.number, rendered.subject)
        message_id = new_message_id(self._settings.support_domain)
        raw = compose(
            headers=self._headers(case=case, mail=mail, subject=subject, message_id=message_id),
            text=rendered.text,
            html=rendered.html,
            attachments=[self._stored(session, attachment) for attachment in mail.attachments],
        )
        now = utcnow()
        outbox_values = {
            "case_id": case.id,
            "kind": mail.kind,
            "automatic": mail.automatic,
            # VERP: a report that comes back to this address and names this Message-ID is
            # a bounce of ours; any other multipart/report is just untrusted mail.
            "mail_from": self._addresses.for_bounce(message_id=message_id),
            "recipient": mail.recipient.lower(),
            "message_id": message_id,
            "raw": raw,
            "created_at": now,
            "next_attempt_at": now,
        }
        if mail.to_staff:
            return outbox_values, None
        return outbox_values, {
            "direction": "outbound",
            "source": mail.source,
            "message_id": message_id,
            "sender": self._settings.support_address.lower(),
            "from_header": f"{self._settings.support_name} <{self._settings.support_address}>",
            "to_header": mail.recipient,
            "subject": subject,
            "date": now,
            "text": rendered.text,
            "html": rendered.html,
            "auto_generated": mail.automatic,
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
            "delivery_status": "queued",
            "received_at": now,
            "created_at": now,
        }

    def _over_hourly_limit(self, session: Session, recipient: str) -> bool:
        sent = outbox.AutomaticCounts.of(session).to(recipient)
        return sent >= self._settings.auto_replies_per_sender_per_hour

    def _context(self, case: Case, mail: Outgoing) -> dict[str, Any]:
        return {
            "case_number": case.number,
            "case_subject": case.subject,
            "support_address": self._settings.support_address,
            "support_name": self._settings.support_name,
            "customer_name": case.requester_name,
            **mail.context,
        }

    def _stored(self, session: Session, attachment: OutgoingAttachment) -> AttachmentRef:
        sha256, size = attachment.sha256, attachment.size
        if sha256 is None:
            sha256 = self._blobs.put(session=session, content=attachment.content)
            size = len(attachment.content)
        return AttachmentRef(attachment.filename, attachment.content_type, sha256, size or 0)

    def _headers(self, *, case: Case, mail: Outgoing, subject: str, message_id: str) -> list[tuple[str, str]]:
        settings = self._settings
        if mail.to_staff:
            reply_to = self._addresses.for_staff(number=case.number, staff_address=mail.recipient)
        else:
            reply_to = self._addresses.for_customer(number=case.number, customer=mail.recipient)
        headers = [
            ("From", address_header(settings.support_name, settings.support_address)),
            ("To", address_header("", mail.recipient)),
            ("Subject", encoded_text(subject)),
            ("Date", formatdate(usegmt=True)),
            ("Message-ID", f"<{message_id}>"),
            ("Reply-To", address_header(settings.support_name, reply_to)),
        ]
        if mail.in_reply_to:
            headers.append(("In-Reply-To", f"<{mail.in_reply_to}>"))
            headers.append(("References", "\r\n ".join(f"<{mid}>" for mid in _reference_chain(mail))))
        if mail.automatic:
            headers.append(("Auto-Submitted", "auto-replied"))
        headers.append(("X-Auto-Response-Suppress", "All"))
        headers.append((LOOP_HEADER, self.loop_marker))
        return headers
