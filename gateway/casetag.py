"""The case tag `[#NUMBER]`: its one home (format, find, strip, clean subject).

Every outgoing subject carries the tag (SPEC §2); threading finds it again in a reply's subject,
also behind the prefixes clients add (`Re: RE: Odp: AW: Fwd: [#…]`). Case numbers look like
`2026-000123` (store.cases.next_case_number).
"""

from __future__ import annotations

import re

# A number as store.cases hands them out: the year, a dash, at least six digits.
_NUMBER = r"\d{4}-\d{6,}"
_TAG = re.compile(rf"\[#\s*({_NUMBER})\s*\]")
_TAG_WITH_SPACE = re.compile(rf"\s*\[#\s*{_NUMBER}\s*\]\s*")
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|odp|pd|sv|vs|tr|rv)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def format_tag(number: str) -> str:
    return f"[#{number}]"


def tagged_subject(number: str, subject: str) -> str:
    """`subject` as the gateway sends it: the case tag first."""
    return f"{format_tag(number)} {subject}"


def find_case_number(subject: str) -> str | None:
    """The case number of the first tag in `subject`, if any."""
    match = _TAG.search(subject)
    return match.group(1) if match else None


def strip_leading_tag(subject: str) -> str:
    """`subject` without the one case tag it starts with (our own subjects: "[#N] Re: …")."""
    match = _TAG_WITH_SPACE.match(subject)
    return subject[match.end() :] if match else subject


def clean_subject(subject: str) -> str:
    """The subject without reply/forward prefixes and case tags, for a new case's title."""
    previous = None
    while previous != subject:
        previous = subject
        subject = _TAG_WITH_SPACE.sub(" ", _REPLY_PREFIX.sub("", subject)).strip()
    return subject
