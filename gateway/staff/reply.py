"""Staff replies written in ordinary mail clients: the new text and the commands on its first lines.

Commands, one per line before any other text: `#close`, `#open`, `#category NAME`, `#note`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.staff.quotes import strip_quoted_reply

_COMMAND = re.compile(r"^#(close|open|note|category)\b[ \t]*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class StaffReply:
    body: str  # what the customer gets, quotes and command lines removed
    text: str  # the staff member's own lines, commands included (what a note keeps)
    close: bool = False
    reopen: bool = False
    note: bool = False
    category: str | None = None


def read_staff_reply(text: str) -> StaffReply:
    own = strip_quoted_reply(text)
    lines = own.splitlines()
    close = reopen = note = False
    category: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        match = _COMMAND.match(line)
        if match is None:
            break
        name, argument = match.group(1).lower(), match.group(2).strip()
        close |= name == "close"
        reopen |= name == "open"
        note |= name == "note"
        if name == "category" and argument:
            category = argument[:100]
        index += 1
    body = "\n".join(lines[index:]).strip()
    return StaffReply(body=body, text=own.strip(), close=close, reopen=reopen, note=note, category=category)
