"""Header fields: decoded for display, addresses and message identifiers read leniently.

The policy's structured parser is used where it is affordable; huge or numerous headers take a
linear path (our own RFC 2047 decoder) because the policy's parser is superlinear.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import AddressHeader
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from gateway.parse.charsets import decode_bytes
from gateway.parse.parts import (
    HEADER_OBJECTS,
    POLICY,
    defect_text,
    guard,
    raw_items,
    repair_8bit,
    unfold,
)

_ANGLE_ID_RE = re.compile(r"<([^<>]*)>")
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BARE_ADDRESS_RE = re.compile(r"[^\s<>,;:\"()\[\]]+@[^\s<>,;:\"()\[\]]+")
_QUOTED_LOCAL_RE = re.compile(r'^"(?:[^"\\]|\\.)*"@[^\s"]+$')
_DOT_ATOM_RE = re.compile(r"^[^\s\"@<>()\[\],;:\\]+$")
# Labels of letters (any script: IDN), digits and hyphens; or an address literal. A single label
# (anonymised "xxxxx@xxxxx", "root@localhost") is still an address someone wrote.
_DOMAIN_RE = re.compile(r"^(?:(?:[^\W_]|[-_])+(?:\.(?:[^\W_]|[-_])+)*|\[[0-9a-f.:]+\])$")
_ANGLE_ADDRESS_RE = re.compile(r"<([^<>@\s]+@[^<>@\s]+)>")
_STRUCTURED_LIMIT = 8 * 1024  # longest header value given to the policy's (superlinear) parser
_STRUCTURED_BUDGET = 128 * 1024  # header text per message after which every header takes the fast path


@dataclass(frozen=True)
class Header:
    name: str  # lower-case
    raw: str  # unfolded source value, 8-bit bytes already decoded
    obj: object | None  # the policy's header object, None when it could not be built
    text: str  # decoded, for display


def read_headers(msg: Message, defects: list[str]) -> list[Header]:
    headers = []
    budget = _STRUCTURED_BUDGET
    fast = 0
    for name, value in raw_items(msg):
        header = read_header(name, value, defects, structured=budget > 0)
        budget -= len(header.raw)
        fast += header.obj is None and budget <= 0
        headers.append(header)
    if fast:
        defects.append(f"{fast} header fields past {_STRUCTURED_BUDGET} bytes read without the structured parser")
    return headers


def read_header(name: str, value: str, defects: list[str], *, structured: bool = True) -> Header:
    name = repair_8bit(name).strip().lower()
    raw = unfold(repair_8bit(value))
    if not structured or len(raw) > _STRUCTURED_LIMIT:
        # The policy's header parser slows down quadratically (16 KB of addresses: 0.5 s);
        # huge or numerous headers are decoded by our linear path instead.
        if len(raw) > _STRUCTURED_LIMIT:
            defects.append(f"header {name}: {len(raw)} characters, read without the structured parser")
        return Header(name, raw, None, _display(decode_words(raw, f"header {name}", defects)).strip())
    obj: object | None
    try:
        # The same To (the support address), MIME-Version and Content-Type come in message after
        # message, and the structured parse is most of parse_message's time: one parse serves them.
        obj = HEADER_OBJECTS.get(name, raw, POLICY.header_factory)
        text = str(obj)
    except Exception as exc:  # e.g. AttributeError 'Group' object has no attribute 'local_part'
        defects.append(f"header {name}: not parseable ({type(exc).__name__}: {exc}); kept as text")
        obj, text = None, decode_words(raw, f"header {name}", defects)
    if obj is not None:
        found = obj
        header_defects: list[object] = guard(lambda: list(getattr(found, "defects", ())), [])
        for defect in header_defects:
            defects.append(f"header {name}: {defect_text(defect)}")
        # The policy silently turns an unknown charset in an encoded-word into U+FFFD.
        if "\ufffd" in text and "\ufffd" not in raw and "=?" in raw:
            text = decode_words(raw, f"header {name}", defects)
    return Header(name, raw, obj, _display(text).strip())


def _display(text: str) -> str:
    """Header text for display: NUL dropped (no database stores it), other controls made spaces."""
    return _CONTROL_RE.sub(" ", text.replace("\x00", ""))


def message_id(headers: list[Header], raw: bytes, defects: list[str]) -> tuple[str, bool]:
    """(Message-ID without brackets, whether it was synthesised from the raw bytes' hash)."""
    value = first_raw(headers, "message-id")
    found = ids(value)
    if found:
        return found[0], False
    token = value.strip().strip("<>").split()
    if token:
        defects.append("Message-ID without angle brackets")
        return token[0], False
    return synthesised_id(raw), True


def synthesised_id(raw: bytes) -> str:
    return f"{hashlib.sha256(raw).hexdigest()[:32]}@synthesised.invalid"


def date(headers: list[Header], defects: list[str]) -> datetime | None:
    value = first_raw(headers, "date").strip()
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is not None:  # a naive result means "-0000": UTC with unknown origin
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    except Exception as exc:
        defects.append(f"Date not understood ({value[:80]!r}: {type(exc).__name__})")
        return None


def first(headers: list[Header], name: str) -> list[Header]:
    return next(([h] for h in headers if h.name == name), [])


def every(headers: list[Header], name: str) -> list[Header]:
    return [h for h in headers if h.name == name]


def first_raw(headers: list[Header], name: str) -> str:
    return next((h.raw for h in headers if h.name == name), "")


def first_text(headers: list[Header], name: str) -> str:
    return next((h.text for h in headers if h.name == name), "")


def joined(headers: list[Header], name: str) -> str:
    return " ".join(h.raw for h in headers if h.name == name)


def ids(value: str) -> list[str]:
    """Every <id> in order, tolerating garbage between them; bare tokens with "@" when there are none."""
    found = ["".join(match.split()) for match in _ANGLE_ID_RE.findall(value)]
    found = [i for i in found if i]
    if found or "<" in value:
        return found
    return [token for token in value.replace(",", " ").split() if "@" in token]


def addresses(headers: list[Header]) -> list[tuple[str, str]]:
    """(display name, lower-case addr-spec) pairs; addr-spec is "" when it is not an address."""
    pairs: list[tuple[str, str]] = []
    for header in headers:
        found = _structured_addresses(header.obj) if isinstance(header.obj, AddressHeader) else None
        if found is None:  # no header object, or groups without local parts
            found = _fallback_addresses(header.text)
        pairs.extend((str(name or ""), clean_address(str(addr or ""))) for name, addr in found)
    return pairs


def _structured_addresses(obj: AddressHeader) -> list[tuple[str, str]] | None:
    try:
        return [(a.display_name, a.addr_spec) for a in obj.addresses]
    except Exception:  # e.g. groups without local parts
        return None


def _fallback_addresses(text: str) -> list[tuple[str, str]]:
    """The old-style address parser, and when even that fails (it recurses once per address on
    some inputs), whatever looks like addr-specs."""
    found = guard(lambda: getaddresses([text]), None)
    if found is None:
        found = [("", addr) for addr in _BARE_ADDRESS_RE.findall(text)]
    return found


def clean_address(addr: str) -> str:
    addr = addr.strip().strip("<>").strip().lower()
    # Group syntax leftovers ("undisclosed-recipients:") and fragments are not addresses; spaces
    # belong only inside a quoted local part ("jan nowak"@example.pl is an address).
    if not addr or addr.endswith(":") or re.search(r"[<>,;]", addr):
        return ""
    if re.search(r"\s", addr) and not _QUOTED_LOCAL_RE.match(addr):
        return ""
    return addr


# Where the requester is read from, in order: the From header, then these (RFC 5322 3.6.2, and the
# trace of the envelope sender), then the envelope itself.
_REQUESTER_FALLBACKS = (("sender", "Sender"), ("reply-to", "Reply-To"), ("return-path", "Return-Path"))


@dataclass(frozen=True)
class Requester:
    name: str  # display name, from the From header when it has one
    address: str  # lower-case addr-spec, "" when nothing usable was found
    source: str  # from | sender | reply-to | return-path | envelope | "" (none)


def requester(headers: list[Header], envelope_sender: str | None, defects: list[str]) -> Requester:
    """Who wrote it: the first valid From address, else Sender, Reply-To, Return-Path, the envelope.

    A garbage first From, `<>`, an encoded-word display name with `<>`: each would give a case no
    one can answer. Any choice other than the first From address is recorded as a defect.
    """
    from_pairs = [pair for header in every(headers, "from") for pair in _author_pairs(header)]
    from_name = next((name for name, _ in from_pairs if name), "")
    for index, (name, addr) in enumerate(from_pairs):
        usable = usable_address(addr, "From", defects)
        if usable:
            if index > 0:
                defects.append(f"requester: From address {index + 1} used; the ones before are not addresses")
            return Requester(name or from_name, usable, "from")
    for header_name, label in _REQUESTER_FALLBACKS:
        for name, addr in addresses(every(headers, header_name)):
            usable = usable_address(addr, label, defects)
            if usable:
                defects.append(f"requester: From has no usable address; taken from {label}")
                return Requester(from_name or name, usable, header_name)
    envelope = usable_address(clean_address(envelope_sender or ""), "envelope sender", defects)
    if envelope:
        defects.append("requester: no usable address in the headers; taken from the envelope sender")
        return Requester(from_name, envelope, "envelope")
    defects.append("requester: no usable sender address anywhere")
    return Requester(from_name, "", "")


def _author_pairs(header: Header) -> list[tuple[str, str]]:
    """From's addresses; when an unquoted display name holds an "@" (`a@b <a@b.example>`) the
    policy takes the name for the address, so an address in angle brackets wins then."""
    pairs = addresses([header])
    angled = [clean_address(found) for found in _ANGLE_ADDRESS_RE.findall(header.raw)]
    if angled and not any(addr in angled for _, addr in pairs):
        name = header.text.partition("<")[0].strip().strip('"').strip()
        return [(name, addr) for addr in angled]
    return pairs


def usable_address(addr: str, label: str, defects: list[str]) -> str:
    """The address if one can write back to it ("" if not); a trailing dot on the domain is dropped."""
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        return ""
    if domain.endswith(".") and not domain.endswith(".."):
        domain = domain[:-1]
        defects.append(f"{label}: trailing dot removed from the domain of {addr!r}")
    if not _DOMAIN_RE.match(domain) or not (_DOT_ATOM_RE.match(local) or _QUOTED_LOCAL_RE.match(local + "@x")):
        return ""
    return f"{local}@{domain}"


def decode_words(value: str, what: str, defects: list[str]) -> str:
    """Our own RFC 2047 decoder for when the policy's fails or swallows an unknown charset."""
    out: list[str] = []
    last = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        between = value[last : match.start()]
        if not (out and between.strip() == ""):  # whitespace between two encoded words is dropped
            out.append(between)
        out.append(_decode_word(match, what, defects))
        last = match.end()
    out.append(value[last:])
    return "".join(out)


def _decode_word(match: re.Match[str], what: str, defects: list[str]) -> str:
    charset, encoding, payload = match.group(1).split("*")[0], match.group(2).upper(), match.group(3)
    try:
        if encoding == "B":
            data = binascii.a2b_base64(payload.encode("ascii") + b"=" * (-len(payload) % 4))
        else:
            data = binascii.a2b_qp(payload.encode("ascii", "surrogateescape"), header=True)
    except (binascii.Error, ValueError):
        defects.append(f"{what}: undecodable encoded-word kept as is")
        return match.group(0)
    return decode_bytes(data, charset, what, defects)
