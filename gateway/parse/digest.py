"""What makes a message this message, as one SHA-256: the sender, subject, bodies and attachments.

Trace headers (Received, Return-Path, Delivered-To, X-*, DKIM/ARC/Authentication-Results), Date and
Message-ID are left out on purpose: an MTA retry or an IMAP re-fetch of the same message gives the
same digest, while a different message that reuses a Message-ID (broken mailers, templates) does not.
"""

from __future__ import annotations

import hashlib

from gateway.parse.model import ParsedAttachment


def content_digest(
    *, sender: str, subject: str, text: str, html: str | None, attachments: tuple[ParsedAttachment, ...]
) -> str:
    digest = hashlib.sha256()

    def field(value: bytes) -> None:
        # Length-prefixed, so that moving bytes from one field to the next changes the digest.
        digest.update(len(value).to_bytes(8, "big"))
        digest.update(value)

    for value in (sender, subject, text.strip(), (html or "").strip()):
        field(value.encode("utf-8", "surrogatepass"))
    for item in attachments:
        field(item.filename.encode("utf-8", "surrogatepass"))
        field(hashlib.sha256(item.content).digest())
    return digest.hexdigest()
