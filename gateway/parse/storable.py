"""Text fields a database can store: NUL (which PostgreSQL text refuses) removed, and lone surrogates
(raw 8-bit that no decoder claimed, which no UTF-8 encoder accepts) replaced by U+FFFD.

Only the parsed text is cleaned; the raw bytes, which the journal keeps, are never touched.
"""

from __future__ import annotations

import dataclasses
import re

from gateway.parse.model import DeliveryReport, ParsedAttachment, ParsedMessage

_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    if _UNSTORABLE_RE.search(text) is None:  # the common case: no copy
        return text
    return _UNSTORABLE_RE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def _texts(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(storable_text(value) for value in values)


def _attachment(item: ParsedAttachment) -> ParsedAttachment:
    return dataclasses.replace(
        item,
        filename=storable_text(item.filename),
        content_type=storable_text(item.content_type),
        content_id=None if item.content_id is None else storable_text(item.content_id),
        refused_reason=None if item.refused_reason is None else storable_text(item.refused_reason),
    )


def _report(report: DeliveryReport | None) -> DeliveryReport | None:
    if report is None:
        return None
    return dataclasses.replace(
        report,
        original_message_id=None if report.original_message_id is None else storable_text(report.original_message_id),
        recipients=_texts(report.recipients),
        action=storable_text(report.action),
        status=storable_text(report.status),
        diagnostic=storable_text(report.diagnostic),
    )


def storable(parsed: ParsedMessage, *, max_defects: int) -> ParsedMessage:
    """The same message with every text field storable (bytes fields are left as they are), and
    at most `max_defects` defects listed (the rest counted in the last one)."""
    defects = tuple(dict.fromkeys(_texts(parsed.defects)))
    if len(defects) > max_defects:
        kept = max(max_defects - 1, 0)
        defects = (*defects[:kept], f"{len(defects) - kept} more defects not listed")
    return dataclasses.replace(
        parsed,
        message_id=storable_text(parsed.message_id),
        in_reply_to=_texts(parsed.in_reply_to),
        references=_texts(parsed.references),
        subject=storable_text(parsed.subject),
        from_address=storable_text(parsed.from_address),
        from_name=storable_text(parsed.from_name),
        from_header=storable_text(parsed.from_header),
        to=_texts(parsed.to),
        cc=_texts(parsed.cc),
        reply_to=_texts(parsed.reply_to),
        to_header=storable_text(parsed.to_header),
        cc_header=storable_text(parsed.cc_header),
        text=storable_text(parsed.text),
        html=None if parsed.html is None else storable_text(parsed.html),
        attachments=tuple(_attachment(item) for item in parsed.attachments),
        headers=tuple((storable_text(name), storable_text(value)) for name, value in parsed.headers),
        defects=defects,
        delivery_report=_report(parsed.delivery_report),
    )
