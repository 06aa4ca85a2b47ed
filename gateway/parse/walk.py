"""The MIME walk: which parts are containers, which text parts make the body, every leaf in order.

One `MimeTree` per message keeps the per-part caches and the message's defect list, and re-splits
multiparts whose boundary the email package never found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from gateway.parse.budget import DEFAULT_BUDGET, Deadline, ParseBudget
from gateway.parse.feed import Refusal, effective_max_depth, feed
from gateway.parse.parts import (
    content_id,
    declared_filename,
    defect_text,
    eight_bit_guess,
    guard,
    has_content,
    param,
    part_defects,
    payload_list,
    raw_header,
    raw_payload,
)

_BOUNDARY_RE = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))""", re.I)


@dataclass(frozen=True)
class Leaf:
    part: Message
    in_related: bool  # inside multipart/related: an inline part of an HTML page
    in_report: bool  # a direct child of a delivery report: the report or the returned message


class MimeTree:
    def __init__(
        self,
        msg: Message,
        defects: list[str],
        source: bytes = b"",
        refused: dict[int, Refusal] | None = None,
        *,
        budget: ParseBudget = DEFAULT_BUDGET,
        deadline: Deadline | None = None,
    ) -> None:
        self.msg = msg
        self.refused = dict(refused or {})  # id(part) -> why the feed parser did not unpack it
        self.budget = budget
        self.deadline = deadline or Deadline(budget)
        self.max_depth = effective_max_depth(budget)
        self.source = source  # the bytes msg was parsed from (raw, or raw after a repair of its head)
        self.defects = defects
        self._recovered: dict[int, Message | None] = {}
        self._ctypes: dict[int, str] = {}

    def content_type(self, part: Message) -> str:
        key = id(part)
        if key not in self._ctypes:
            self._ctypes[key] = guard(lambda: part.get_content_type().lower(), "application/octet-stream")
        return self._ctypes[key]

    def kind(self, part: Message) -> str:
        """multipart | broken (a multipart the parser could not split) | message | leaf."""
        maintype = self.content_type(part).partition("/")[0]
        is_list = isinstance(guard(lambda: part.get_payload(), None), list)
        if maintype == "multipart":
            return "multipart" if is_list else "broken"
        return "message" if maintype == "message" else "leaf"

    def effective_type(self, part: Message) -> str:
        """A multipart that stayed unsplit is read as the plain text it effectively is."""
        return "text/plain" if self.kind(part) == "broken" else self.content_type(part)

    def resolve(self, part: Message) -> Message:
        """The part itself, or the multipart we re-split when the parser never found its boundary."""
        if self.kind(part) != "broken":
            return part
        key = id(part)
        if key not in self._recovered:
            self._recovered[key] = self._recover_multipart(part)
        return self._recovered[key] or part

    def _recover_multipart(self, part: Message) -> Message | None:
        ctype = self.content_type(part)
        raw_ct = raw_header(part, "content-type")
        for defect in part_defects(part):
            self.defects.append(f"{ctype}: {defect_text(defect)}")
        match = _BOUNDARY_RE.search(raw_ct)
        body = raw_payload(part)
        if match:
            boundary = (match.group(1) or match.group(2)).strip()
            if b"--" + boundary.encode("utf-8", "surrogateescape") in body:
                # Typically an unquoted boundary containing "=", which the parser cuts short.
                head = f'Content-Type: {ctype}; boundary="{boundary}"\r\n\r\n'.encode("utf-8", "surrogateescape")
                fed = guard(lambda: feed(head + body, self.budget, self.deadline), None)  # within the budgets too
                sub = fed.msg if fed is not None else None
                if fed is not None and sub is not None and self.kind(sub) == "multipart":
                    self.refused.update(fed.refused)
                    self.defects.extend(fed.notes)
                    self.defects.append(f"{ctype}: boundary {boundary!r} recovered from the raw header")
                    return sub
        self.defects.append(f"{ctype}: boundary never found; the body is kept as plain text")
        return None

    def children(self, part: Message) -> list[Message]:
        return [self.resolve(child) for child in payload_list(part) or []]

    def _related_root(self, part: Message, children: list[Message]) -> Message | None:
        """RFC 2387: the part named by "start", else the first; MHTML writers sometimes put the HTML
        later and say so only in "type", so a first part of another type defers to that."""
        start = param(part, "start").strip().strip("<>")
        if start:
            for child in children:
                if content_id(child) == start:
                    return child
        root_type = param(part, "type").strip().lower()
        if children and root_type and self.content_type(children[0]) != root_type:
            return next((c for c in children if self.content_type(c) == root_type), children[0])
        return children[0] if children else None

    def bodies(self, part: Message, depth: int = 0) -> tuple[Message | None, Message | None]:
        """The text/plain and text/html parts that make up the message body (either may be None)."""
        kind = self.kind(part)
        if kind in ("leaf", "broken"):
            if self.is_attachment(part) or not has_content(part):
                return None, None  # a blank text part must not hide the real body behind it
            ctype = self.effective_type(part)
            return (part, None) if ctype == "text/plain" else (None, part) if ctype == "text/html" else (None, None)
        if kind != "multipart":
            return None, None  # message/*: an embedded message is an attachment, not our body
        if depth > self.max_depth:  # only where re-split multiparts stack up beyond the feed's limit
            self.defects.append(f"parts nested deeper than {self.max_depth} levels are kept as attachments")
            return None, None
        children = self.children(part)
        subtype = self.content_type(part).partition("/")[2]
        if subtype == "related":
            root = self._related_root(part, children)
            return self.bodies(root, depth + 1) if root is not None else (None, None)
        if subtype == "alternative":
            plain = html = None
            for child in children:
                child_plain, child_html = self.bodies(child, depth + 1)
                plain = plain or child_plain
                html = child_html or html  # alternatives go from plainest to richest
            return plain, html
        for child in children:  # mixed, signed, report...: the first part that has a body is it
            found = self.bodies(child, depth + 1)
            if found != (None, None):
                return found
        return None, None

    def leaves(self, root: Message) -> Iterator[Leaf]:
        """Every non-container part in document order, with where it sits."""
        stack: list[Leaf] = [Leaf(root, in_related=False, in_report=False)]
        while stack:
            leaf = stack.pop()
            if self.kind(leaf.part) == "multipart":
                ctype = self.content_type(leaf.part)
                related = leaf.in_related or ctype == "multipart/related"
                report = ctype == "multipart/report" and param(leaf.part, "report-type").lower() == "delivery-status"
                stack.extend(Leaf(child, related, report) for child in reversed(self.children(leaf.part)))
            else:
                yield leaf

    def collect_part_defects(self, root: Message) -> None:
        stack = [root]
        while stack:
            part = stack.pop()
            label = "message" if part is self.msg or part is root else self.content_type(part)
            for defect in part_defects(part):
                self.defects.append(f"{label}: {defect_text(defect)}")
            if part is not self.msg and (codec := eight_bit_guess(part)):  # the message's own: parser.py
                self.defects.append(f"{label}: 8-bit header text without a declared charset read as {codec}")
            if self.kind(part) == "multipart":
                stack.extend(reversed(self.children(part)))
        if root is not self.msg:
            for defect in part_defects(self.msg):
                self.defects.append(f"message: {defect_text(defect)}")

    def is_attachment(self, part: Message) -> bool:
        disposition = guard(lambda: part.get_content_disposition(), None)
        if disposition == "attachment":
            return True
        return disposition != "inline" and bool(declared_filename(part))
