"""Outgoing mail: render a template, give it the headers of SPEC §6, and put it in the outbox.

Every outgoing message is composed here and only here, so each one gets its own Message-ID
(stored before sending), In-Reply-To/References of the conversation, the `[#NUMBER]` subject tag,
a signed Reply-To, the loop marker, and on automatic mail Auto-Submitted and
X-Auto-Response-Suppress.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email.charset import QP, Charset
from email.encoders import encode_base64
from email.header import Header
from email.message import Message as Message_
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import formataddr, formatdate, make_msgid
from typing import Any

from sqlmodel import Session, select

from gateway.addresses import ReplyAddresses
from gateway.casetag import tagged_subject
from gateway.classify import LOOP_HEADER
from gateway.outbound.templates import MailTemplates
from gateway.settings import Settings
from store import cases, outbox
from store.models import Case, Message, OutboxItem, utcnow

MAX_REFERENCES = 20  # keep References from growing without bound in long threads


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    content: bytes


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
    def __init__(self, *, settings: Settings, templates: MailTemplates, addresses: ReplyAddresses) -> None:
        self._settings = settings
        self._templates = templates
        self._addresses = addresses

    @property
    def loop_marker(self) -> str:
        return self._settings.support_address.lower()

    def queue(self, *, session: Session, case: Case, mail: Outgoing) -> OutboxItem | None:
        """Render `mail` and commit it to the outbox in the caller's transaction.

        Automatic mail beyond the per-sender hourly limit is not queued (returns None).
        """
        if mail.automatic and not mail.to_staff and self._over_hourly_limit(session, mail.recipient):
            return None
        rendered = self._templates.render(mail.kind, language=case.language, context=self._context(case, mail))
        subject = tagged_subject(case.number, rendered.subject)
        message = self._build(case=case, mail=mail, subject=subject, text=rendered.text, html=rendered.html)
        raw = as_wire_bytes(message)
        message_id = str(message["Message-ID"]).strip("<>")
        item = outbox.enqueue(
            session=session,
            item=OutboxItem(
                case_id=case.id,
                kind=mail.kind,
                automatic=mail.automatic,
                mail_from=self._settings.support_address,
                recipient=mail.recipient.lower(),
                message_id=message_id,
                raw=raw,
            ),
        )
        if not mail.to_staff:
            cases.add_message(
                session=session,
                case=case,
                message=Message(
                    case_id=case.id or 0,
                    direction="outbound",
                    source=mail.source,
                    message_id=message_id,
                    sender=self._settings.support_address.lower(),
                    from_header=f"{self._settings.support_name} <{self._settings.support_address}>",
                    to_header=mail.recipient,
                    subject=subject,
                    date=utcnow(),
                    text=rendered.text,
                    html=rendered.html,
                    auto_generated=mail.automatic,
                    raw_sha256=hashlib.sha256(raw).hexdigest(),
                    outbox_id=item.id,
                    delivery_status="queued",
                ),
            )
        return item

    def _over_hourly_limit(self, session: Session, recipient: str) -> bool:
        since = utcnow() - timedelta(hours=1)
        sent = outbox.count_automatic_to(session=session, recipient=recipient.lower(), since=since)
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

    def _build(self, *, case: Case, mail: Outgoing, subject: str, text: str, html: str | None) -> Message_:
        # Built with the compat32 classes: headers are written as given (RFC 2047-encoded where
        # needed) instead of being parsed and refolded by the header registry, which cost more
        # than everything else the pipeline does for a message.
        message = _body(text, html, mail.attachments)
        message["From"] = formataddr((self._settings.support_name, self._settings.support_address), "utf-8")
        message["To"] = mail.recipient
        message["Subject"] = _encoded(subject)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._settings.support_domain)
        if mail.to_staff:
            reply_to = self._addresses.for_staff(number=case.number)
        else:
            reply_to = self._addresses.for_customer(number=case.number, customer=mail.recipient)
        message["Reply-To"] = formataddr((self._settings.support_name, reply_to), "utf-8")
        if mail.in_reply_to:
            message["In-Reply-To"] = f"<{mail.in_reply_to}>"
            message["References"] = "\r\n ".join(f"<{mid}>" for mid in _reference_chain(mail))
        if mail.automatic:
            message["Auto-Submitted"] = "auto-replied"
        message["X-Auto-Response-Suppress"] = "All"
        message[LOOP_HEADER] = self.loop_marker
        return message


_UTF8_QP = Charset("utf-8")
# Quoted-printable keeps Polish text (and the [#NUMBER] tag) readable in the raw mail.
_UTF8_QP.body_encoding = _UTF8_QP.header_encoding = QP
_WIRE = compat32.clone(linesep="\r\n", max_line_length=78)


def _encoded(value: str) -> str:
    """The value as a header: ASCII words as they are, the rest as RFC 2047 encoded-words."""
    if value.isascii():
        return value
    ascii_prefix, rest = "", value
    while rest and rest.split(" ", 1)[0].isascii() and " " in rest:
        word, rest = rest.split(" ", 1)
        ascii_prefix += word + " "
    header = Header(ascii_prefix, "us-ascii", maxlinelen=76, header_name="Subject")
    header.append(rest, _UTF8_QP)
    return header.encode()


def _text_part(text: str, subtype: str) -> Message_:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, _UTF8_QP)
    return part


def _body(text: str, html: str | None, attachments: Sequence[OutgoingAttachment]) -> Message_:
    body: Message_ = _text_part(text, "plain")
    if html is not None:
        alternative = MIMEMultipart("alternative")
        alternative.attach(body)
        alternative.attach(_text_part(html, "html"))
        body = alternative
    if not attachments:
        return body
    mixed = MIMEMultipart("mixed")
    mixed.attach(body)
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        part = MIMEBase(maintype or "application", subtype or "octet-stream")
        part.set_payload(attachment.content)
        encode_base64(part)
        part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", attachment.filename))
        mixed.attach(part)
    return mixed


def as_wire_bytes(message: Message_) -> bytes:
    return message.as_bytes(policy=_WIRE)
