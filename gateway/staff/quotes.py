"""Find the new text of a reply: what the sender wrote above the message they quoted.

Recognises the quote headers of the mail clients our customers use, in Polish and English
("On … wrote:", "W dniu … pisze:", "Dnia … napisał(a):", Gmail's wrapped date line, Apple's
"Wiadomość napisana przez …", "-----Original Message-----", Outlook's From/Sent/To/Subject block)
and plain ">" quoting. Forwarded messages are not quotes: their content is new to the case.
Signatures stay. When the reply is interleaved with the quote, the whole text is returned, because
the answers live between the quoted lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERBS = r"(?:wrote|napisał\(a\)|napisała|napisał|pisze|schrieb|a écrit|escribió)"
_QUOTE_MARKS = r"(?:>\s*)*"
# Attribution lines, matched against one to three physical lines joined with spaces (Gmail wraps).
_ATTRIBUTION_RES = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"^{_QUOTE_MARKS}On\s.{{1,400}}\s{_VERBS}\s*:$",
        rf"^{_QUOTE_MARKS}(?:W dniu|Dnia)\s.{{1,400}}\s{_VERBS}\s*:$",
        rf"^{_QUOTE_MARKS}Użytkownik\s.{{1,400}}\s{_VERBS}\s*:$",
        rf"^{_QUOTE_MARKS}Wiadomość napisana przez\s.{{1,400}}\sw dniu\s.{{1,200}}:$",
        # Any other client: a date or time, then "… wrote:" at the end ("wt., 25 lis 2026 o 10:00 …").
        rf"^{_QUOTE_MARKS}.{{0,200}}\d{{1,2}}[:.]\d{{2}}.{{0,400}}\s{_VERBS}\s*:$",
    )
)
_SEPARATOR_RE = re.compile(
    r"^-{2,}\s*(?:original message|oryginalna wiadomo(?:ść|sc)|wiadomo(?:ść|sc) oryginalna"
    r"|ursprüngliche nachricht|message d'origine)\s*-{2,}$",
    re.IGNORECASE,
)
_FORWARD_RE = re.compile(
    r"^(?:-{2,}\s*(?:forwarded message|przekazana wiadomo(?:ść|sc)|wiadomo(?:ść|sc) przekazana)\s*-{2,}"
    r"|begin forwarded message:|początek przekazywanej wiadomości:)$",
    re.IGNORECASE,
)
_RULE_RE = re.compile(r"^(?:_{5,}|-{5,})$")
# Outlook's header block: From/Od first, then Sent/Date, To and Subject lines in some order.
_FIELD = r"^\*?{names}\*?\s*:"
_FROM_RE = re.compile(_FIELD.format(names=r"(?:From|Od|Von|De)") + r"\s*\S", re.IGNORECASE)
_BLOCK_FIELD_RES = (
    re.compile(_FIELD.format(names=r"(?:Sent|Date|Wysłane|Wysłano|Data|Gesendet|Envoyé)"), re.IGNORECASE),
    re.compile(_FIELD.format(names=r"(?:To|Do|An|À)"), re.IGNORECASE),
    re.compile(_FIELD.format(names=r"(?:Subject|Temat|Betreff|Objet)"), re.IGNORECASE),
)
_MAX_ATTRIBUTION = 600  # characters; longer "lines ending in a colon" are prose, not attributions
_BLOCK_REACH = 8  # lines after From: in which the other fields must appear


@dataclass(frozen=True)
class _Marker:
    index: int  # first line of the quote (or of its header)
    prefixed: bool  # True when the quote is made of ">" lines; False for Outlook-style blocks


def strip_quoted_reply(text: str) -> str:
    """The new text above the quoted part of `text`; the whole text (trimmed) if there is no quote."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    quoted = [line.lstrip().startswith(">") for line in lines]
    marker = _find_marker(lines, quoted)
    if marker is None:
        return _join(lines)
    above = _join(lines[: marker.index])
    if not marker.prefixed:  # an Outlook-style quote runs to the end: nothing below it is new
        return above or _join(lines)
    interleaved, below = _after_quote(lines, quoted, marker.index)
    if interleaved or (above and below and not _is_signature(below)):
        return _join(lines)  # answers between or around the quoted lines: the quote belongs to them
    return above or below or _join(lines)  # nothing above: a bottom-posted reply


def _find_marker(lines: list[str], quoted: list[bool]) -> _Marker | None:
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if _FORWARD_RE.match(stripped):
            return None  # what follows was forwarded on purpose; its header block is no quote
        if _SEPARATOR_RE.match(stripped):
            return _Marker(index, prefixed=False)
        if _is_attribution(lines, index):
            return _Marker(index, prefixed=_quote_follows(lines, quoted, index))
        if _FROM_RE.match(stripped) and _is_header_block(lines, index):
            return _Marker(_rule_above(lines, index), prefixed=False)
        if quoted[index]:
            return _Marker(index, prefixed=True)
    return None


def _is_attribution(lines: list[str], index: int) -> bool:
    window: list[str] = []
    for line in lines[index : index + 3]:
        if not line.strip():
            return False
        window.append(line.strip())
        joined = " ".join(window)
        # Every attribution ends with ":"; checking that first keeps the regexes off most lines.
        if len(joined) > _MAX_ATTRIBUTION or not joined.endswith(":"):
            continue
        if any(pattern.match(joined) for pattern in _ATTRIBUTION_RES):
            # A wrapped match must start here: "Thanks." above "Dnia … napisał(a):" is new text.
            return len(window) == 1 or not _is_attribution(lines, index + 1)
    return False


def _quote_follows(lines: list[str], quoted: list[bool], index: int) -> bool:
    following = [i for i in range(index + 1, min(len(lines), index + 6)) if lines[i].strip()]
    return bool(following) and any(quoted[i] for i in following[:3])


def _is_header_block(lines: list[str], index: int) -> bool:
    block = [line.strip() for line in lines[index + 1 : index + 1 + _BLOCK_REACH]]
    found = sum(1 for pattern in _BLOCK_FIELD_RES if any(pattern.match(line) for line in block))
    has_subject = any(_BLOCK_FIELD_RES[2].match(line) for line in block)
    return has_subject and found >= 2


def _rule_above(lines: list[str], index: int) -> int:
    """Outlook puts a ____ rule above its header block; the quote starts there."""
    above = index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    return above if above >= 0 and _RULE_RE.match(lines[above].strip()) else index


def _after_quote(lines: list[str], quoted: list[bool], start: int) -> tuple[bool, str]:
    """(whether unquoted text sits between the quoted lines, the text below the last quoted line)."""
    last = max((i for i in range(start, len(lines)) if quoted[i]), default=start)
    first_body = start
    while first_body < last and not quoted[first_body]:
        first_body += 1  # skip the attribution line(s) above the first ">" line
    interleaved = any(lines[i].strip() and not quoted[i] for i in range(first_body, last))
    return interleaved, _join(lines[last + 1 :])


def _is_signature(text: str) -> bool:
    return text.split("\n", 1)[0].rstrip() == "--"


def _join(lines: list[str]) -> str:
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    return "\n".join(lines[start:]).rstrip()
