"""Unpack Outlook's winmail.dat (application/ms-tnef) into its real files and body, using tnefparse.

`unpack_tnef` raises `TnefError` when the stream cannot be read at all, or would cost too much to
read; the caller (parse.py) then keeps winmail.dat itself. Compressed RTF (MS-OXRTFCP) is
decompressed here because tnefparse only does that through an optional package we do not depend on.

tnefparse 1.4.0 trusts the counts inside the stream: a few crafted bytes make it loop for hours or
copy the stream once per object. The guards below bound that work; see `_guard_mapi_loops`.
"""

from __future__ import annotations

import contextvars
import logging
import mimetypes
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tnefparse
import tnefparse.mapi
from tnefparse.properties import MAPI_ATTACH_CONTENT_ID, MAPI_ATTACH_MIME_TAG

_TNEF_MIME = "application/ms-tnef"
_SIGNATURE = struct.pack("<I", 0x223E9F78)
_LZFU = 0x75465A4C  # "LZFu": compressed RTF
_MELA = 0x414C454D  # "MELA": RTF stored uncompressed
# MS-OXRTFCP 2.1.3.1.1: the dictionary every compressed RTF stream starts from.
_RTF_PRESET = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern "
    b"\\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0"
    b"\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
_MAX_RTF = 16 * 1024 * 1024  # decompressed RTF we are willing to produce (pure Python: ~4 MB/s)
_MAX_OBJECTS = 20_000  # TNEF attributes per stream; real ones have about ten per attachment
_MAX_COPIED = 4 << 30  # bytes tnefparse copies while walking (it slices the rest for every object)
_MAX_PROPERTIES = 200_000  # MAPI property values decoded per stream

# tnefparse logs every odd object at WARNING; the caller records what matters as defects.
logging.getLogger("tnefparse").setLevel(logging.ERROR)


class TnefError(Exception):
    """The bytes are not a readable TNEF stream."""


@dataclass(frozen=True)
class TnefFile:
    name: str  # as stored in the stream, possibly "" (the caller generates one)
    content_type: str
    content: bytes
    content_id: str | None = None


@dataclass(frozen=True)
class TnefContent:
    files: tuple[TnefFile, ...]
    text: str | None
    html: str | None
    rtf: bytes | None  # decompressed RTF body
    defects: tuple[str, ...]

    @property
    def output_bytes(self) -> int:
        files = sum(len(f.content) for f in self.files)
        return files + len(self.text or "") + len(self.html or "") + len(self.rtf or b"")

    @property
    def empty(self) -> bool:
        return not (self.files or self.text or self.html or self.rtf)


def _never() -> bool:
    return False


def unpack_tnef(data: bytes, *, max_output: int = _MAX_RTF, expired: Callable[[], bool] = _never) -> TnefContent:
    """Read a TNEF stream; raise TnefError if it is not one, or too costly to read: more than
    `max_output` bytes out (a "TNEF bomb" of compressed RTF), or past the time budget (`expired`)."""
    _check_object_walk(data)
    budget = _property_budget.set([_MAX_PROPERTIES])
    try:
        # Checksums are skipped: a bad checksum would not make us drop a file anyway.
        tnef = tnefparse.TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises ValueError, IndexError, struct.error, ...
        raise TnefError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        _property_budget.reset(budget)
    defects: list[str] = []
    files = _files(tnef, defects)
    codepage = _codec_name(tnef.codepage)
    text = _as_text(tnef.body, codepage)
    html = _as_text(tnef.htmlbody, codepage)
    if sum(len(f.content) for f in files) + len(text) + len(html) > max_output:
        raise TnefError(f"unpacks to more than {max_output} bytes, the budget for containers")
    rtf = _rtf_body(tnef, defects, files, max_output - sum(len(f.content) for f in files), expired)
    return TnefContent(tuple(files), text or None, html or None, rtf, tuple(defects))


def _check_object_walk(data: bytes) -> None:
    """Walk the attribute headers the way tnefparse does, refusing streams that would make its
    per-object copy of the remaining bytes quadratic in practice."""
    if data[:4] != _SIGNATURE:
        raise TnefError("no TNEF signature")
    offset, objects, copied, size = 6, 0, 0, len(data)
    while offset + 12 < size:  # tnefparse's loop condition (MIN_OBJ_SIZE = 12)
        declared = int.from_bytes(data[offset + 5 : offset + 9], "little")
        objects += 1
        copied += size - offset
        if objects > _MAX_OBJECTS or copied > _MAX_COPIED:
            raise TnefError(f"more than {objects - 1} attributes; too costly to unpack")
        offset += min(size - offset, declared + 11)


# -- bounding tnefparse's MAPI loops ------------------------------------------------------------
#
# decode_mapi() loops `range(count)` over counts read from the stream: when the data runs out it
# logs "Skipping property" and carries on (up to 4 billion times), and multi-value properties keep
# "reading" empty slices past the end. We make both loops end: a property read past the end, a
# "Skipping property" warning, or more than _MAX_PROPERTIES values per stream raise inside
# decode_mapi(), whose own `except Exception` then returns what was read so far.

_property_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("tnef_property_budget")
_original_parse_property = tnefparse.mapi.parse_property


def _bounded_parse_property(data: bytes, offset: int, *args: Any) -> Any:
    if offset >= len(data):
        raise ValueError("MAPI property past the end of its attribute")
    remaining = _property_budget.get(None)
    if remaining is not None:
        remaining[0] -= 1
        if remaining[0] < 0:
            raise ValueError("too many MAPI properties")
    return _original_parse_property(data, offset, *args)


class _StopOnSkip(logging.LoggerAdapter):
    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Skipping property"):
            raise ValueError("MAPI property count larger than its attribute")
        super().warning(msg, *args, **kwargs)


def _guard_mapi_loops() -> None:
    """Install the bounds into tnefparse.mapi (once, even if this module is imported again)."""
    if tnefparse.mapi.parse_property is not _bounded_parse_property and not getattr(
        tnefparse.mapi.parse_property, "_gateway_bounded", False
    ):
        setattr(_bounded_parse_property, "_gateway_bounded", True)  # noqa: B010 (a marker on a function)
        tnefparse.mapi.parse_property = _bounded_parse_property
        tnefparse.mapi.logger = _StopOnSkip(tnefparse.mapi.logger, {})


_guard_mapi_loops()


def _files(tnef: tnefparse.TNEF, defects: list[str]) -> list[TnefFile]:
    files = []
    for index, att in enumerate(tnef.attachments, start=1):
        try:
            name = _attr_text(att.long_filename())
            content = bytes(att.data or b"")
            props = {a.name: a.data for a in att.mapi_attrs}
            # An embedded Outlook item stays one file, like message/rfc822 in MIME.
            ctype = _TNEF_MIME if hasattr(att, "embed") else _content_type(props, name)
            cid = _attr_text(props.get(MAPI_ATTACH_CONTENT_ID)).strip("<> ") or None
        except Exception as exc:
            defects.append(f"winmail.dat attachment {index} unreadable: {type(exc).__name__}: {exc}")
            continue
        files.append(TnefFile(name, ctype, content, cid))
    return files


def _content_type(props: dict, name: str) -> str:
    declared = _attr_text(props.get(MAPI_ATTACH_MIME_TAG)).strip().lower()
    if declared.count("/") == 1 and " " not in declared:
        return declared
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _attr_text(value: object) -> str:
    """MAPI string properties come back as str or bytes (and sometimes lists for multi-values)."""
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip("\x00").strip()
        except UnicodeDecodeError:
            return value.decode("cp1252", errors="replace").strip("\x00").strip()
    return str(value or "").strip("\x00").strip()


def _codec_name(codepage: object) -> str:
    name = str(codepage or "cp1252")
    try:
        "".encode(name)
    except LookupError:
        return "cp1252"
    return name


def _as_text(value: object, codepage: str) -> str:
    if value is None:
        return ""
    text: str
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode(codepage, errors="replace")
    else:
        text = str(value)
    return text.replace("\x00", "").replace("\r\n", "\n")


def _rtf_body(
    tnef: tnefparse.TNEF, defects: list[str], files: list[TnefFile], max_output: int, expired: Callable[[], bool]
) -> bytes | None:
    # tnefparse keeps the compressed RTF private and only decompresses it with an extra package.
    compressed = getattr(tnef, "_rtfbody", None)
    if not compressed:
        return None
    try:
        return decompress_rtf(bytes(compressed), max_output=max_output, expired=expired).rstrip(b"\x00")
    except ValueError as exc:  # kept as it came, so nothing is lost
        defects.append(f"winmail.dat RTF body not decompressed ({exc}); kept as body.rtf.lzfu")
        files.append(TnefFile("body.rtf.lzfu", "application/octet-stream", bytes(compressed)))
        return None


def decompress_rtf(data: bytes, *, max_output: int = _MAX_RTF, expired: Callable[[], bool] = _never) -> bytes:
    """Decompress an MS-OXRTFCP stream ("LZFu" or "MELA"); ValueError if it is not one, or if it
    would produce more than `max_output` bytes or take past the time budget."""
    if len(data) < 16:
        raise ValueError("RTF stream shorter than its header")
    _comp_size, raw_size, comp_type, _crc = struct.unpack_from("<IIII", data, 0)
    if comp_type == _MELA:
        return data[16 : 16 + raw_size]
    if comp_type != _LZFU:
        raise ValueError(f"unknown RTF compression {comp_type:#x}")
    if raw_size > min(_MAX_RTF, max_output):
        raise ValueError(f"RTF claims {raw_size} bytes, more than we decompress")
    return _lzfu(data, raw_size, expired)


def _lzfu(data: bytes, raw_size: int, expired: Callable[[], bool]) -> bytes:
    window = bytearray(4096)
    window[: len(_RTF_PRESET)] = _RTF_PRESET
    write = len(_RTF_PRESET)
    out = bytearray()
    pos, end = 16, len(data)
    groups = 0
    while pos < end:
        control = data[pos]
        pos += 1
        for bit in range(8):
            if pos >= end:
                return bytes(out[:raw_size])
            if not control & (1 << bit):
                byte = data[pos]
                pos += 1
                out.append(byte)
                window[write] = byte
                write = (write + 1) & 0xFFF
                continue
            if pos + 1 >= end:
                return bytes(out[:raw_size])
            ref = (data[pos] << 8) | data[pos + 1]
            pos += 2
            offset, length = ref >> 4, (ref & 0xF) + 2
            if offset == write:  # the reference that points at the write head marks the end
                return bytes(out[:raw_size])
            for i in range(length):
                byte = window[(offset + i) & 0xFFF]
                out.append(byte)
                window[write] = byte
                write = (write + 1) & 0xFFF
            if len(out) >= raw_size:  # the header's size bounds the work, whatever follows
                return bytes(out[:raw_size])
        groups += 1
        if not groups & 0x3FFF and expired():  # pure Python (~4 MB/s): the time budget is checked here
            raise ValueError("time budget used up while decompressing")
    return bytes(out[:raw_size])
