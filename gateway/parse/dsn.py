"""Delivery status notifications (RFC 3464): who bounced, why, and which of our messages it was.

Reports come mangled (fields in the wrong block, base64 announced in one block and carried in the
next); what cannot be read costs the report, never the message's text and attachments.
"""

from __future__ import annotations

import re
from email.message import Message

from gateway.parse.charsets import decode_bytes
from gateway.parse.content import decode_base64, payload_bytes
from gateway.parse.headers import clean_address, ids
from gateway.parse.model import DeliveryReport
from gateway.parse.parts import LINEBREAK_RE, param, payload_list, raw_items, raw_payload, repair_8bit, unfold
from gateway.parse.walk import MimeTree

DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
RETURNED_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"})
_STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_DSN_TYPE_PREFIX_RE = re.compile(r"^[\w.-]+\s*;\s*")
_HEADER_MSGID_RE = re.compile(r"^message-id[ \t]*:(.*(?:\n[ \t].*)*)", re.I | re.M)

Fields = list[tuple[str, str]]


def is_delivery_report(tree: MimeTree, root: Message) -> bool:
    return tree.content_type(root) == "multipart/report" and param(root, "report-type").lower() == "delivery-status"


def guarded_report(tree: MimeTree, root: Message) -> DeliveryReport | None:
    """A report we fail to read must not cost the message its text and attachments."""
    try:
        return _delivery_report(tree, root)
    except Exception as exc:
        tree.defects.append(f"delivery report unreadable: {type(exc).__name__}: {exc}")
        return None


def _delivery_report(tree: MimeTree, root: Message) -> DeliveryReport | None:
    if not is_delivery_report(tree, root):
        return None
    children = tree.children(root)
    blocks: list[Fields] = []
    for child in children:
        if tree.content_type(child) in DSN_TYPES:
            blocks.extend(_dsn_blocks(child, tree.defects))
    returned = next((c for c in children if tree.content_type(c) in RETURNED_TYPES), None)
    original = _returned_message_id(tree, returned) if returned is not None else None
    recipients = [_recipient(block) for block in _recipient_blocks(blocks)]
    chosen = next((r for r in recipients if r[1] == "failed"), recipients[0] if recipients else None)
    _, action, status, diagnostic = chosen or ("", "", "", "")
    return DeliveryReport(
        original_message_id=original,
        recipients=tuple(dict.fromkeys(r[0] for r in recipients if r[0])),
        action=action,
        status=status,
        diagnostic=diagnostic,
    )


def _dsn_blocks(part: Message, defects: list[str]) -> list[Fields]:
    """The field blocks of a message/delivery-status part, however the parser split them."""
    sub_parts = payload_list(part)
    if sub_parts is None:
        text = decode_bytes(payload_bytes(part, "message/delivery-status", defects), None, "", [])
        return _field_blocks(text)
    blocks = []
    encoded = False
    for block in sub_parts:
        fields = [(repair_8bit(k).lower(), unfold(repair_8bit(v))) for k, v in raw_items(block)]
        blocks.append(fields)
        # A mangled report can announce base64 in one block and carry it in the next (seen
        # behind Proofpoint); the encoded text then holds the per-recipient fields.
        encoded = encoded or dict(fields).get("content-transfer-encoding", "").strip().lower() == "base64"
        body = raw_payload(block)
        if body.strip():
            if encoded:
                body = decode_base64(body, "message/delivery-status", defects)
            blocks.extend(_field_blocks(decode_bytes(body, None, "", [])))
    return blocks


def _returned_message_id(tree: MimeTree, part: Message) -> str | None:
    if tree.content_type(part).startswith("message/"):
        inner = next(iter(payload_list(part) or []), None)
        if isinstance(inner, Message):
            values = [v for k, v in raw_items(inner) if k.lower() == "message-id"]
            found = ids(unfold(values[0])) if values else []
            return found[0] if found else None
        return None
    text = decode_bytes(payload_bytes(part, "text/rfc822-headers", tree.defects), None, "", [])
    match = _HEADER_MSGID_RE.search(LINEBREAK_RE.sub("\n", text))
    found = ids(unfold(match.group(1))) if match else []
    return found[0] if found else None


def _field_blocks(text: str) -> list[Fields]:
    """Parse "Name: value" blocks separated by blank lines (RFC 3464 layout), folding included."""
    blocks: list[Fields] = [[]]
    for line in LINEBREAK_RE.split(text):
        if not line.strip():
            if blocks[-1]:
                blocks.append([])
        elif line[0] in " \t" and blocks[-1]:
            name, value = blocks[-1][-1]
            blocks[-1][-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            if re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
                blocks[-1].append((name.strip().lower(), value.strip()))
    return [b for b in blocks if b]


def _recipient_blocks(blocks: list[Fields]) -> list[Fields]:
    """Per-recipient field groups; a block holding several recipients (no blank lines) is split."""
    result: list[Fields] = []
    for block in blocks:
        group: Fields = []
        for name, value in block:
            if name in ("final-recipient", "original-recipient") and any(n == name for n, _ in group):
                result.append(group)
                group = []
            group.append((name, value))
        if any(n in ("final-recipient", "original-recipient") for n, _ in group):
            result.append(group)
    return result


def _recipient(block: Fields) -> tuple[str, str, str, str]:
    """(address, action, status, diagnostic) of one recipient block."""
    fields: dict[str, str] = {}
    for name, value in block:
        fields.setdefault(name, " ".join(value.split()))
    address = fields.get("final-recipient") or fields.get("original-recipient") or ""
    diagnostic = _DSN_TYPE_PREFIX_RE.sub("", fields.get("diagnostic-code", ""))
    status = _STATUS_RE.search(fields.get("status", "")) or _STATUS_RE.search(diagnostic)
    return (
        clean_address(_DSN_TYPE_PREFIX_RE.sub("", address)),
        fields.get("action", "").lower(),
        status.group(1) if status else "",
        diagnostic,
    )
