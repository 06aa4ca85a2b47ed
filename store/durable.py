"""Files that must survive a power loss once the gateway relies on them: attachment blobs (the
database row that names one is committed right after) and mail delivered into a maildir.

Writing to a temporary name, fsyncing it and renaming it is half of it: the rename is a change of
the directory, and until the directory itself is fsynced a crash can undo it (ext4 with
data=ordered usually keeps it; XFS, or ext4 with other options, need not), leaving a committed
row that names a file which is not there. So the directory is fsynced after the rename, and so
is the parent of every directory created on the way.
"""

from __future__ import annotations

import os
from pathlib import Path


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directories(directory: Path) -> None:
    """`mkdir -p`, each new directory's entry made durable in its parent."""
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # another process may create it at the same moment: fine
        _fsync_directory(new.parent)


def write_file(final: Path, content: bytes, *, temporary: Path) -> None:
    """`final` holds `content`, whole, or does not exist, whatever happens to the machine; `temporary`
    (same directory or file system) is where it is written first."""
    make_directories(final.parent)
    with open(temporary, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    _fsync_directory(final.parent)
