"""The raw messages inside the paths given to `gateway ingest`: .eml files, mbox files, maildirs."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


_SINGLE_MESSAGE_SUFFIXES = {".eml", ".msg", ".txt"}


def _is_mbox(path: Path) -> bool:
    # An .eml may start with an mbox "From " line too; it is still one message, byte for byte.
    if path.suffix.lower() in _SINGLE_MESSAGE_SUFFIXES:
        return False
    with open(path, "rb") as handle:
        return path.suffix.lower() == ".mbox" or handle.read(5) == b"From "


def iter_raw_messages(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) for every message under `paths`, in a stable order."""
    for path in paths:
        if _is_maildir(path):
            maildir = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(maildir.keys()):
                with maildir.get_file(key) as handle:
                    yield f"{path}:{key}", handle.read()
        elif path.is_dir():
            yield from iter_raw_messages(sorted(p for p in path.iterdir() if not p.name.startswith(".")))
        elif _is_mbox(path):
            mbox = mailbox.mbox(path, factory=None, create=False)
            for index, key in enumerate(mbox.keys()):
                yield f"{path}#{index}", mbox.get_bytes(key)
        else:
            yield str(path), path.read_bytes()


def count_messages(paths: list[Path]) -> int:
    return sum(1 for _ in iter_raw_messages(paths))
