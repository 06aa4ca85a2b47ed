"""The email package's feed parser with budgets: parts, nesting depth, header fields and bytes.

The parser is stopped where it gets costly rather than after: a part nested too deep or past the
part budget is not split any further (its Content-Type is read as application/octet-stream and the
part is recorded as refused), header fields past the budget are dropped before the email package
builds objects for them (the fields every message needs are kept), and feeding stops once the part
budget or the time budget is used up.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.feedparser import BytesFeedParser
from email.message import Message

from gateway.parse.budget import Deadline, ParseBudget
from gateway.parse.parts import POLICY

_FEED_CHUNK = 16 * 1024  # small enough that the part and time budgets are checked often
# Python's recursion limit bounds how deep the feed parser's nested generators can go.
_HARD_MAX_DEPTH = 200


def effective_max_depth(budget: ParseBudget) -> int:
    return min(budget.max_depth, _HARD_MAX_DEPTH)


_KEY_FIELD_BYTES = 64 * 1024  # a key field past the byte budget is still kept, up to this size
# Fields kept past the header budget: what threading, the requester, classification and the MIME
# structure need (first occurrence of each).
KEY_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "return-path",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "content-description",
        "auto-submitted",
        "precedence",
        "list-id",
        "x-auto-response-suppress",
        "x-autoreply",
        "x-autorespond",
    }
)


@dataclass(frozen=True)
class Refusal:
    reason: str
    content_type: str  # as declared, before the part was read as application/octet-stream


@dataclass(frozen=True)
class FeedResult:
    msg: Message
    refused: dict[int, Refusal]  # id(part) -> why it was not unpacked
    notes: tuple[str, ...]  # defects of the feeding itself (dropped headers, bytes not read)
    unread_bytes: int  # bytes at the end that were never parsed (budget used up)
    unread_reason: str


class _BudgetedFeedParser(BytesFeedParser):
    def __init__(self, budget: ParseBudget) -> None:
        super().__init__(policy=POLICY)
        self.budget = budget
        self.max_depth = effective_max_depth(budget)
        self.parts = 0
        self.refused: dict[int, Refusal] = {}
        self.notes: list[str] = []

    @property
    def over_parts(self) -> bool:
        return self.parts > self.budget.max_parts

    # _new_message and _parse_headers are the feed parser's private hooks, which typeshed does not
    # declare: hence the ignores below.
    def _new_message(self) -> None:
        super()._new_message()  # type: ignore[misc]
        self.parts += 1

    def _parse_headers(self, lines: list[str]) -> None:
        super()._parse_headers(self._within_budget(lines))  # type: ignore[misc]
        depth = len(self._msgstack)  # type: ignore[attr-defined]
        if depth <= 1 or (not self.over_parts and depth <= self.max_depth):
            return  # the common case, decided without parsing a header
        current: Message = self._cur  # type: ignore[attr-defined]
        # The raw value, not the policy's (costly) parse: this runs for every part of a bomb.
        declared = next((str(v) for k, v in current.raw_items() if k.lower() == "content-type"), "")
        ctype = declared.split(";")[0].strip().lower() or current.get_default_type()  # message/rfc822 in a digest
        container = ctype.startswith(("multipart/", "message/"))
        if self.over_parts:
            reason = f"more than {self.budget.max_parts} MIME parts"
        elif container and depth > self.max_depth:
            reason = f"MIME parts nested deeper than {self.max_depth} levels"
        else:
            return
        self.refused[id(current)] = Refusal(reason, ctype)
        if container:  # not split any further: its body stays one opaque leaf
            del current["Content-Type"]
            current["Content-Type"] = "application/octet-stream"

    def _within_budget(self, lines: list[str]) -> list[str]:
        """The header lines within the field and byte budgets, plus the key fields past them."""
        budget = self.budget
        if len(lines) <= budget.max_headers and sum(len(line) for line in lines) <= budget.max_header_bytes:
            return lines
        kept: list[str] = []
        fields = dropped = size = field_size = 0
        keeping = within = False
        seen: set[str] = set()
        for line in lines:
            if line[:1] in (" ", "\t"):  # a folded continuation of the field before
                if keeping and (within or field_size + len(line) <= _KEY_FIELD_BYTES):
                    kept.append(line)
                    size += len(line)
                    field_size += len(line)
                continue
            fields += 1
            name = line.partition(":")[0].strip().lower()
            within = fields <= budget.max_headers and size + len(line) <= budget.max_header_bytes
            keeping = within or (name in KEY_FIELDS and name not in seen and len(line) <= _KEY_FIELD_BYTES)
            if keeping:
                kept.append(line)
                seen.add(name)
                size += len(line)
                field_size = len(line)
            else:
                dropped += 1
        self.notes.append(
            f"{dropped} header fields not read: over the budget of {budget.max_headers} fields "
            f"or {budget.max_header_bytes} bytes per part"
        )
        return kept


def feed(data: bytes, budget: ParseBudget, deadline: Deadline) -> FeedResult:
    """Parse in slices: handing the parser one huge string would keep a decoded copy of the whole
    message alive next to its line list, about 1.5x the message size more at the peak."""
    parser = _BudgetedFeedParser(budget)
    view = memoryview(data)
    offset = 0
    reason = ""
    while offset < len(data):
        parser.feed(bytes(view[offset : offset + _FEED_CHUNK]))
        offset += _FEED_CHUNK
        if parser.over_parts:
            reason = f"more than {budget.max_parts} MIME parts"
        elif deadline.expired():
            reason = deadline.reason
        if reason:
            break
    unread = max(0, len(data) - offset)
    notes = list(parser.notes)
    if unread:
        notes.append(f"{reason}: the last {unread} bytes were not parsed")
    return FeedResult(parser.close(), parser.refused, tuple(notes), unread, reason)
