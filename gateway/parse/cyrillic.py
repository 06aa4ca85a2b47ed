"""A plausible single-byte Cyrillic reading of short undeclared 8-bit text (KOI8-R, Windows-1251).

charset-normalizer needs more text than a subject line to tell KOI8-R from Shift_JIS, Big5 or
GB2312: any byte pair in 0xC0-0xFF is a valid double-byte character in those, and its coherence
measure cannot judge a handful of CJK characters. Russian text has a shape random double-byte
characters do not: every 8-bit byte is a Cyrillic letter (or common typography), words are
lower case, Capitalised or ALL CAPS (KOI8-R read as Windows-1251 swaps the case: "пРИВЕТ"), and
about four letters in ten are vowels.
"""

from __future__ import annotations

import re

SHORT_TEXT_BYTES = 1024  # up to here the detector's guess is weak; longer text it reads well
_CODECS = ("koi8-r", "cp1251")
# The letters of Russian, Ukrainian and Belarusian (not the Serbian/Macedonian ones cp1251 also has).
_LETTERS = "А-яЁёІіЇїЄєҐґЎў"
_CYRILLIC_RUN_RE = re.compile(f"[{_LETTERS}]+")
_FOREIGN_RE = re.compile(f"[^\x00-\x7f{_LETTERS}{''.join(sorted('«»—–…№„“”‘’·°'))}\xa0]")
_MIXED_SCRIPT_RE = re.compile(f"[A-Za-z][{_LETTERS}]|[{_LETTERS}][A-Za-z]")
# Lead bytes of the frequent characters of each double-byte charset (level-1 hanzi, kanji and kana,
# Hangul syllables): what a real short CJK text is mostly made of.
_FREQUENT_LEADS = {
    "gb": range(0xB0, 0xD8),
    "big5": range(0xA4, 0xC7),
    "cp932": range(0x82, 0x99),
    "shift_jis": range(0x82, 0x99),
    "euc_jp": range(0xA4, 0xD0),
    "cp949": range(0xB0, 0xC9),
    "euc_kr": range(0xB0, 0xC9),
    "johab": range(0x88, 0xD4),
}
_VOWELS = frozenset("аеёиоуыэюяіїєАЕЁИОУЫЭЮЯІЇЄ")
# Share of vowels among the letters: Russian prose has ~0.42, a short phrase 0.25-0.6.
_MIN_VOWELS, _MAX_VOWELS = 0.2, 0.7


def cyrillic_reading(data: bytes) -> tuple[str, str] | None:
    """(codec, text) of the single-byte Cyrillic reading of `data` that looks like Russian (or
    Ukrainian, Belarusian) text, preferring the one mostly in lower case as prose is; None when
    none does."""
    readings = [(codec, text) for codec in _CODECS if (text := _decoded(data, codec)) and _plausible(text)]
    if not readings:
        return None
    return max(readings, key=lambda reading: sum(1 for ch in reading[1] if ch.islower()))


def frequent_double_byte(codec: str, text: str) -> bool:
    """Whether `text` is a double-byte reading made mostly of the frequent characters of its
    charset (a KOI8-R word read as Big5 or Shift_JIS is mostly rare hanzi, level-2 kanji or
    half-width katakana); False for single-byte readings."""
    name = codec.lower().replace("-", "_")
    leads = next((leads for prefix, leads in _FREQUENT_LEADS.items() if name.startswith(prefix)), None)
    foreign = [ch for ch in text if ord(ch) > 127]
    if leads is None or not foreign:
        return False
    frequent = sum(1 for ch in foreign if _lead_byte(ch, codec) in leads)
    return frequent >= 0.8 * len(foreign)


def _lead_byte(ch: str, codec: str) -> int:
    try:
        encoded = ch.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return -1
    return encoded[0] if len(encoded) == 2 else -1  # a single 8-bit byte (half-width katakana) is rare


def _decoded(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:  # cp1251 leaves 0x98 undefined
        return ""


def _plausible(text: str) -> bool:
    if _FOREIGN_RE.search(text) or _MIXED_SCRIPT_RE.search(text):
        return False  # box drawing, symbols, Latin letters glued to Cyrillic: not what a person writes
    runs = _CYRILLIC_RUN_RE.findall(text)
    if not runs or not all(run.islower() or run.isupper() or run.istitle() for run in runs):
        return False
    letters = sum(len(run) for run in runs)
    vowels = sum(1 for run in runs for ch in run if ch in _VOWELS)
    # One letter says nothing either way (and no Polish reading should yield to it).
    return letters >= 2 and _MIN_VOWELS <= vowels / letters <= _MAX_VOWELS
