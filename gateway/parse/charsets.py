"""Text from bytes in whatever charset a mail claims: the label mapped to a codec, a lying or
unknown label degraded to a best effort (UTF-8, else the Polish single-byte charset that fits).
"""

from __future__ import annotations

import codecs
from functools import lru_cache

_POLISH_LETTERS = frozenset("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ")
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
        if decoded is not None:
            return decoded
        defects.append(f"{what}: bytes do not match declared charset {charset!r}; decoded best effort")
    return best_effort(data)


def _try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def best_effort(data: bytes) -> str:
    """UTF-8 if it is UTF-8, else whichever Polish single-byte charset yields more Polish letters."""
    decoded = _try_decode(data, "utf-8")
    if decoded is not None:
        return decoded
    windows = data.decode("cp1250", errors="replace")
    latin2 = data.decode("iso-8859-2", errors="replace")
    return latin2 if _polish_score(latin2) > _polish_score(windows) else windows


def _polish_score(text: str) -> int:
    return sum(1 for ch in text if ch in _POLISH_LETTERS)
