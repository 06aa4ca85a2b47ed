"""Values every backend can store: the last line of defence before a row is written.

PostgreSQL refuses NUL in text (`DataError … cannot contain NUL`), no UTF-8 encoder accepts a lone
surrogate (raw 8-bit that no decoder claimed), and PostgreSQL refuses a value longer than its
VARCHAR column. Mail is full of all three; none of them may quarantine a message. The parser already
hands over storable text; this also covers what comes from elsewhere (journal meta, the SMTP
envelope, reasons built from error messages) and anything a future step forgets. The raw bytes in
the journal are never touched.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import inspect

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """NUL removed, a lone surrogate replaced by U+FFFD (the same rule as gateway.parse's)."""
    if _UNSTORABLE.search(text) is None:  # the common case: no copy
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def storable_value(value: Any) -> Any:
    """`value` with every string inside it (dicts, lists, tuples) storable; the same object if clean."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        cleaned = {storable_value(key): storable_value(item) for key, item in value.items()}
        return cleaned if _differs(cleaned, value) else value
    if isinstance(value, list | tuple):
        items = [storable_value(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


def _differs(cleaned: dict[Any, Any], original: dict[Any, Any]) -> bool:
    if len(cleaned) != len(original):
        return True
    return any(key not in original or original[key] is not item for key, item in cleaned.items())


def make_row_storable(row: object) -> None:
    """Clean the loaded column values of an ORM object in place (never loads anything)."""
    state = inspect(row)
    loaded = state.dict
    for attribute in state.mapper.column_attrs:
        key = attribute.key
        if key not in loaded:
            continue
        value = loaded[key]
        if isinstance(value, str):
            cleaned = storable_text(value)
            # VARCHAR(n), also behind SQLModel's AutoString decorator; Text has no length.
            length = getattr(attribute.columns[0].type, "length", None)
            if isinstance(length, int) and len(cleaned) > length:
                cleaned = cleaned[:length]  # what the column holds; the raw bytes keep the rest
        elif isinstance(value, dict | list):
            cleaned = storable_value(value)
        else:
            continue
        if cleaned is not value:
            setattr(row, key, cleaned)
