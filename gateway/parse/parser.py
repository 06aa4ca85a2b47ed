"""bytes -> ParsedMessage: the email package's tree, repaired where it breaks, read step by step.

`parse_message` never raises, whatever the bytes: every part access is guarded, and what cannot be
decoded is degraded (best-effort text) and recorded in `defects`.
"""

from __future__ import annotations

import re
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import gateway.parse.headers as hdr
from gateway.parse.attachments import Collector
from gateway.parse.budget import DEFAULT_BUDGET, Deadline, ParseBudget
from gateway.parse.charsets import best_effort, guess_codec
from gateway.parse.content import text_of
from gateway.parse.digest import content_digest
from gateway.parse.dsn import guarded_report
from gateway.parse.feed import FeedResult, feed
from gateway.parse.model import ParsedMessage
from gateway.parse.parts import LINEBREAK_RE, eight_bit_sample, header_codec, raw_items
from gateway.parse.storable import storable, storable_text
from gateway.parse.text import html_to_text
from gateway.parse.uuencode import extract_uuencoded
from gateway.parse.walk import MimeTree

_UTF8_BOM = b"\xef\xbb\xbf"
_FIELD_LINE_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_MAX_LEADING_LINES = 3  # lines of text before the header block we look past
_SALVAGE_BYTES = 256 * 1024  # of a message the parser failed on, where its header fields are read
_KEY_FIELDS = frozenset({b"from", b"subject", b"date", b"to", b"message-id", b"received", b"return-path"})


def parse_message(
    raw: bytes, *, envelope_sender: str | None = None, budget: ParseBudget = DEFAULT_BUDGET
) -> ParsedMessage:
    """Parse one RFC 5322 message. Never raises: what cannot be read is degraded and listed in defects.

    `envelope_sender` (SMTP MAIL FROM, as journaled) is the requester's last resort when no header
    names a usable address. `budget` bounds the work one message may cost (see budget.py).
    """
    deadline = Deadline(budget)
    try:
        source, fed, repairs = _parse_tree(raw, budget, deadline)
    except Exception as exc:  # the parser is lenient, but nothing may escape from here
        return _unparseable(raw, f"message not parseable: {type(exc).__name__}: {exc}", envelope_sender, budget)
    try:
        codec = guess_codec(eight_bit_sample(raw_items(fed.msg)))
        if codec is not None:
            repairs.append(f"8-bit header text without a declared charset read as {codec}")
        with header_codec(codec):
            parsed = _read(raw, source, fed, repairs, envelope_sender, budget, deadline)
    except Exception as exc:  # a bug or an edge nobody foresaw: keep the bytes readable, record why
        return _unparseable(raw, f"parser failed: {type(exc).__name__}: {exc}", envelope_sender, budget)
    return storable(parsed, max_defects=budget.max_defects)


def _read(
    raw: bytes,
    source: bytes,
    fed: FeedResult,
    defects: list[str],
    envelope_sender: str | None,
    budget: ParseBudget,
    deadline: Deadline,
) -> ParsedMessage:
    msg = fed.msg
    defects.extend(fed.notes)
    tree = MimeTree(msg, defects, source, fed.refused, budget=budget, deadline=deadline)
    headers = hdr.read_headers(msg, defects)
    message_id, synthesised = hdr.message_id(headers, raw, defects)
    author = hdr.requester(headers, envelope_sender, defects)
    root = tree.resolve(msg)
    plain_part, html_part = tree.bodies(root)
    text = text_of(plain_part, tree.effective_type(plain_part), defects) if plain_part is not None else ""
    html = text_of(html_part, tree.effective_type(html_part), defects) if html_part is not None else None
    collector = Collector(tree, container_budget=budget.max_container_output_bytes, expired=deadline.expired)
    text, uu_files = extract_uuencoded(text)
    for uu_file in uu_files:
        collector.add_file(uu_file.name, uu_file.content)
    leaves = [leaf for leaf in tree.leaves(root) if leaf.part is not plain_part and leaf.part is not html_part]
    for index, leaf in enumerate(leaves):
        if deadline.expired():
            collector.refuse(deadline.reason, len(leaves) - index)
            break
        collector.add(leaf)
    if fed.unread_bytes:
        collector.refuse(fed.unread_reason, 0, unread_bytes=fed.unread_bytes)
    text, html = collector.adopt_tnef_bodies(text, html)
    if not text.strip() and html:
        text = html_to_text(html)
    report = guarded_report(tree, root)
    date = hdr.date(headers, defects)
    tree.collect_part_defects(root)  # last: every step above may have added defects
    subject = hdr.first_text(headers, "subject")
    attachments = collector.finish(html)
    return ParsedMessage(
        message_id=message_id,
        in_reply_to=tuple(hdr.ids(hdr.joined(headers, "in-reply-to"))),
        references=tuple(hdr.ids(hdr.joined(headers, "references"))),
        subject=subject,
        from_address=author.address,
        from_name=author.name,
        from_header=hdr.first_text(headers, "from"),
        to=tuple(a for _, a in hdr.addresses(hdr.every(headers, "to")) if a),
        cc=tuple(a for _, a in hdr.addresses(hdr.every(headers, "cc")) if a),
        reply_to=tuple(a for _, a in hdr.addresses(hdr.every(headers, "reply-to")) if a),
        to_header=", ".join(h.text for h in hdr.every(headers, "to")),
        cc_header=", ".join(h.text for h in hdr.every(headers, "cc")),
        date=date,
        text=text,
        html=html,
        attachments=attachments,
        headers=tuple((h.name, h.text) for h in headers),
        defects=tuple(dict.fromkeys(defects)),  # de-duplicated, first occurrence kept
        delivery_report=report,
        message_id_synthesised=synthesised,
        content_digest=content_digest(
            sender=author.address, subject=subject, text=text, html=html, attachments=attachments
        ),
        requester_source=author.source,
    )


def _parse_tree(raw: bytes, budget: ParseBudget, deadline: Deadline) -> tuple[bytes, FeedResult, list[str]]:
    """The email package's tree, after undoing breakages that would turn all headers into body;
    with the bytes it was parsed from (the raw message, or a copy with its head repaired)."""
    repairs: list[str] = []
    data = raw
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]  # slicing copies, but only for this rare case
        repairs.append("message starts with a byte order mark; ignored")
    fed = feed(data, budget, deadline)
    if _headers_lost(fed.msg):
        start = _header_block_start(data)
        if start:
            retry = feed(data[start:], budget, deadline)  # copies, but only in this rare case
            if not _headers_lost(retry.msg):
                skipped = best_effort(data[:start]).strip()
                repairs.append(f"text before the header block skipped: {skipped[:80]!r}")
                return data[start:], retry, repairs
        fixed = _repair_header_block(data)
        if fixed is not None:
            retry = feed(fixed, budget, deadline)
            if not _headers_lost(retry.msg):
                repairs.append("header block had lines that were neither fields nor folded; joined to the field before")
                return fixed, retry, repairs
    return data, fed, repairs


def _headers_lost(msg: Message) -> bool:
    return any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects) or not msg.keys()


def _header_block_start(data: bytes) -> int:
    """Offset of a header block behind a few lines of text ("---- Original email message ----", as
    some forwarding scripts write, or blank lines), or 0 when there is none: the block must begin
    with two field lines and name one of the fields every message has."""
    offset = 0
    for _ in range(_MAX_LEADING_LINES):
        end = data.find(b"\n", offset)
        if end < 0:
            return 0
        offset = end + 1
        head = data[offset : offset + 4096].split(b"\n", 8)[:8]
        if len(head) >= 2 and all(_FIELD_LINE_RE.match(line) for line in head[:2]):
            names = {match.group(1).lower() for line in head if (match := _FIELD_LINE_RE.match(line))}
            if names & _KEY_FIELDS:
                return offset
    return 0


def _repair_header_block(data: bytes) -> bytes | None:
    """Re-fold stray lines in the header block (broken folding, "Name  :" spacing); None if it isn't one."""
    end = re.search(rb"\r?\n\r?\n", data)
    head_end = end.start() if end else len(data)
    lines = data[:head_end].split(b"\n")
    fields = [bool(_FIELD_LINE_RE.match(line)) for line in lines]
    last_field = max((i for i, is_field in enumerate(fields) if is_field), default=-1)
    out = []
    for index, line in enumerate(lines):
        if fields[index]:
            out.append(_FIELD_LINE_RE.sub(rb"\1:", line, count=1))
        elif line[:1] in (b" ", b"\t") or (index == 0 and line.startswith(b"From ")):
            out.append(line)
        elif 0 < index < last_field:
            out.append(b" " + line)  # a stray line between two fields belongs to the one before
        else:
            return None  # text before the first field or after the last: not a header problem we know
    return b"\n".join(out) + data[head_end:]


def _unparseable(raw: bytes, reason: str, envelope_sender: str | None, budget: ParseBudget) -> ParsedMessage:
    """The bytes as text, the header fields that can still be read (read as the email package's
    compat32 policy reads them, which does not parse Content-Type), and the requester chain down to
    the envelope sender: someone can still be answered, in the right thread.

    Reached when the email package itself raises: Python 3.11's header parser fails with IndexError
    on a parameter name ending in "*" with no value ("Content-Type: ;filename*"), which the feed
    parser reads while splitting the message (tests/test_parse_guesses.py, test_parse_smtp.py).
    Mutating the shared corpus (28 000 variants) found no other way in."""
    defects = [reason]
    text = storable_text(LINEBREAK_RE.sub("\n", best_effort(raw)))
    headers = _salvaged_headers(raw, defects)
    author = hdr.requester(headers, envelope_sender, defects)
    subject = hdr.first_text(headers, "subject")
    message_id, synthesised = hdr.message_id(headers, raw, defects)
    parsed = ParsedMessage(
        message_id=message_id,
        in_reply_to=tuple(hdr.ids(hdr.joined(headers, "in-reply-to"))),
        references=tuple(hdr.ids(hdr.joined(headers, "references"))),
        subject=subject,
        from_address=author.address,
        from_name=author.name,
        from_header=hdr.first_text(headers, "from"),
        to=tuple(a for _, a in hdr.addresses(hdr.every(headers, "to")) if a),
        cc=tuple(a for _, a in hdr.addresses(hdr.every(headers, "cc")) if a),
        reply_to=tuple(a for _, a in hdr.addresses(hdr.every(headers, "reply-to")) if a),
        to_header=", ".join(h.text for h in hdr.every(headers, "to")),
        cc_header=", ".join(h.text for h in hdr.every(headers, "cc")),
        date=hdr.date(headers, defects),
        text=text,
        html=None,
        attachments=(),
        headers=tuple((h.name, h.text) for h in headers),
        defects=tuple(dict.fromkeys(defects)),
        message_id_synthesised=synthesised,
        content_digest=content_digest(sender=author.address, subject=subject, text=text, html=None, attachments=()),
        requester_source=author.source,
    )
    return storable(parsed, max_defects=budget.max_defects)


def _salvaged_headers(raw: bytes, defects: list[str]) -> list[hdr.Header]:
    """The top header block read field by field (at most _SALVAGE_BYTES of it), or none."""
    try:
        head = BytesHeaderParser(policy=compat32).parsebytes(raw[:_SALVAGE_BYTES], headersonly=True)
        with header_codec(guess_codec(eight_bit_sample(raw_items(head)))):
            return hdr.read_headers(head, defects)
    except Exception as exc:  # the last resort must not fail: then only the envelope sender is left
        defects.append(f"header fields not readable either: {type(exc).__name__}: {exc}")
        return []
