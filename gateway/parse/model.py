"""The parser's output: frozen values that the rest of the gateway reads and never changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str  # decoded display name, never a path ("" replaced by a generated name)
    content_type: str  # lower-case "type/subtype" as declared
    content: bytes  # decoded content
    content_id: str | None = None  # without angle brackets
    inline: bool = False  # an inline part referenced from the HTML by cid:
    # Set when the part was not unpacked (a MIME budget was used up): content is then b"" and the
    # entry is to be recorded as refused with this reason, like an attachment over the size limit.
    refused_reason: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class DeliveryReport:
    """The machine-readable part of a DSN (multipart/report; report-type=delivery-status)."""

    original_message_id: str | None  # of the message that bounced, without angle brackets
    recipients: tuple[str, ...]
    action: str  # failed | delayed | delivered | relayed | expanded | ""
    status: str  # e.g. "5.1.1"
    diagnostic: str


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str  # without angle brackets; synthesised from the raw bytes' hash when missing
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_address: str  # the requester: lower-case; the first valid From, else Sender... (requester_source)
    from_name: str
    from_header: str  # decoded, for display
    to: tuple[str, ...]  # lower-case addresses
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    to_header: str
    cc_header: str
    date: datetime | None  # naive UTC
    text: str  # the text part; derived from the HTML when there is none
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    # Every header as (lower-case name, decoded value), in order; for classification rules.
    headers: tuple[tuple[str, str], ...] = ()
    defects: tuple[str, ...] = ()
    delivery_report: DeliveryReport | None = None
    message_id_synthesised: bool = field(default=False)
    # SHA-256 over sender, subject, bodies and attachments (see digest.py): same message, same digest,
    # whatever the trace headers; a reused Message-ID on a different message gives another digest.
    content_digest: str = ""
    # Where from_address came from: from | sender | reply-to | return-path | envelope | "" (nowhere).
    # Anything but "from" means the From header had no usable address (also recorded as a defect).
    requester_source: str = "from"

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None
