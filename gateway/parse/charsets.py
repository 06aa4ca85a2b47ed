"""Text from bytes in whatever charset a mail claims: the label mapped to a codec, a lying or
unknown label degraded to a best effort: UTF-8, else (for short text) a plausible KOI8-R or
Windows-1251 reading, else the Polish single-byte charset that fits when the result reads as Polish,
else what charset-normalizer detects (GB2312, KOI8-R, Shift_JIS...). Callers record each guess.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

from charset_normalizer import from_bytes
from charset_normalizer.md import mess_ratio

from gateway.parse.cyrillic import SHORT_TEXT_BYTES, cyrillic_reading, frequent_double_byte

_POLISH_LETTERS = frozenset("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ")
# Non-ASCII characters that real Polish (and neighbouring Latin) text is made of besides its letters.
_LATIN_COMMON = frozenset("–—„”“’‘«»…€§°±×·éèêëüöäßáíúýčďěňřšťžůľĺŕôÉÜÖÄÁÍÚČŠŽ\xa0")
_DETECT_SAMPLE = 64 * 1024  # bytes charset-normalizer looks at (it samples chunks of these anyway)
_SCORE_SAMPLE = 64 * 1024  # characters whose letters we count
_MESS_SAMPLE = 16 * 1024  # characters of a decoded text whose "mess" we measure
_CHAOTIC = 0.5  # mess ratio above which a decode is mojibake (real text in its charset: < 0.15)
_COHERENT = 0.2  # mess ratio below which a detected decode is believed
# Charset labels mail clients use that Python spells differently, or where a superset decodes more.
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gbk",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "iso-8859-1": "cp1252",  # what every browser does: the C1 range is really Windows-1252
    "iso-8859-8-i": "iso-8859-8",
    "utf8": "utf-8",
}
_NO_CHARSET = frozenset({"x-unknown", "unknown", "unknown-8bit", "x-user-defined", "default"})


@lru_cache(maxsize=256)
def codec_for(charset: str) -> str | None:
    """Python's codec for a mail charset label, or None if it has none (unknown, X-UNKNOWN...)."""
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_ALIASES.get(label, label)
    if not label or label in _NO_CHARSET:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    # codecs.lookup also knows base64, rot13 and friends, which are no text encodings.
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _single_byte(codec: str) -> bool:
    return codec.startswith(("iso8859", "cp125", "latin", "koi8", "mac-", "cp437", "cp85"))


def decode_bytes(data: bytes, charset: str | None, what: str, defects: list[str]) -> str:
    """Decode with the declared charset; a lying or unknown one degrades to a best effort + defect."""
    codec = codec_for(charset) if charset else None
    if charset and codec is None:
        defects.append(f"{what}: unknown charset {charset!r}; decoded best effort")
    if codec is not None:
        if _single_byte(codec) and not data.isascii():
            utf8 = _try_decode(data, "utf-8")
            if utf8 is not None:  # real Latin-2 text practically never forms valid UTF-8
                defects.append(f"{what}: declared {charset!r} but the bytes are UTF-8")
                return utf8
        decoded = _try_decode(data, codec)
        if decoded is not None and _single_byte(codec) and not data.isascii() and _chaotic(decoded):
            # A single-byte label decodes any bytes; mojibake is how its lie shows (GB2312 sent as Latin-1).
            detected = _detect(data)
            if detected is not None:
                defects.append(f"{what}: declared {charset!r} but the bytes read as {detected[0]}")
                return detected[1]
        if decoded is not None:
            return decoded
        defects.append(f"{what}: bytes do not match declared charset {charset!r}; decoded best effort")
    guessed, text = guess(data)
    if not data.isascii() and (codec is not None or guessed != "utf-8"):  # a guess (undeclared UTF-8 is sure)
        defects.append(f"{what}: 8-bit text without a known charset read as {guessed}")
    return text


def _try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def best_effort(data: bytes) -> str:
    """UTF-8 if it is UTF-8; else, for short text, a plausible single-byte Cyrillic reading; else
    the Polish single-byte charset that yields more Polish letters, when that reads as Polish; else
    charset-normalizer's guess (a short Cyrillic reading beats an implausible double-byte one); else
    the Polish decode anyway."""
    return guess(data)[1]


def guess(data: bytes) -> tuple[str, str]:
    """(codec, text) of bytes whose charset nobody declared (or declared wrong): best_effort's
    reading and the codec it chose, so a caller can record the guess."""
    decoded = _try_decode(data, "utf-8")
    if decoded is not None:
        return "utf-8", decoded
    codec, polish = _polish(data)
    # Short text is where the detector fails on KOI8-R and Windows-1251 (see cyrillic.py).
    cyrillic = cyrillic_reading(data) if len(data) <= SHORT_TEXT_BYTES else None
    if _reads_as_polish(polish) and not cyrillic:
        # The customers' charsets first. A plausible Cyrillic reading overrides them: it needs every
        # word with an 8-bit byte to be all 8-bit, and a Polish word has ASCII letters beside its ą, ż.
        return codec, polish
    detected = _detect(data)
    if cyrillic and (detected is None or not frequent_double_byte(*detected)):
        return cyrillic
    return detected if detected is not None else (codec, polish)


def guess_codec(data: bytes) -> str | None:
    """The codec undeclared 8-bit header bytes are in (a guess the caller records), or None when
    there are none."""
    return guess(data)[0] if data else None


def _polish(data: bytes) -> tuple[str, str]:
    windows = data.decode("cp1250", errors="replace")
    latin2 = data.decode("iso-8859-2", errors="replace")
    # Scored on a sample: counting letters is a Python loop, and a long text says it early.
    if _polish_score(latin2[:_SCORE_SAMPLE]) > _polish_score(windows[:_SCORE_SAMPLE]):
        return "iso8859-2", latin2
    return "cp1250", windows


def _reads_as_polish(text: str) -> bool:
    """Most non-ASCII characters are Polish letters or Latin typography (mojibake of GB2312 or
    KOI8-R read as Windows-1250 is mostly other letters: ÄăşĂ...)."""
    foreign = [ch for ch in text[:_SCORE_SAMPLE] if ord(ch) > 127]
    if not foreign:
        return True
    fitting = sum(1 for ch in foreign if ch in _POLISH_LETTERS or ch in _LATIN_COMMON)
    return fitting >= 0.8 * len(foreign)


def _chaotic(text: str) -> bool:
    return mess_ratio(text[:_MESS_SAMPLE], maximum_threshold=1.0) > _CHAOTIC


@lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Mail header and body syntax is ASCII: a guess that reads ASCII bytes as something else
    (UTF-16 without a byte order mark, UTF-7) is never what an 8-bit mail means."""
    if codec_for(codec) is None or codec.replace("-", "_").lower().startswith(("utf_16", "utf_32", "utf_7")):
        return False
    sample = bytes(range(32, 127))
    try:
        return sample.decode(codec) == sample.decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


def _detect(data: bytes) -> tuple[str, str] | None:
    """(codec, text) from charset-normalizer when its best guess reads coherently, else None."""
    try:
        match = from_bytes(data[:_DETECT_SAMPLE]).best()
        if match is None or not _ascii_compatible(match.encoding):
            return None
        text = data.decode(match.encoding, errors="replace")
    except Exception:  # a detector must never cost us the message
        return None
    if mess_ratio(text[:_MESS_SAMPLE], maximum_threshold=1.0) >= _COHERENT:
        return None
    return match.encoding, text


def _polish_score(text: str) -> int:
    return sum(1 for ch in text if ch in _POLISH_LETTERS)
