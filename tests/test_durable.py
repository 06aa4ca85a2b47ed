"""store.durable: a blob (or a maildir delivery) is on disk for good before anything relies on it.

A power loss cannot be caused here, so the test watches what a power loss would undo: it records
every fsync (by the path of its descriptor, read from /proc) and every rename, in order, around a
real write to a real file system, and asserts the order that makes the file survive: the file's
data, then the rename, then the directory that holds the new name, and the parent of every
directory created on the way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store.blobs import DiskBlobStore
from store.durable import write_file


@pytest.fixture
def journal_of_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_replace(source, target)
        events.append(("rename", str(target)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_blob_is_durable_with_its_name_and_its_new_directories(tmp_path: Path, journal_of_syncs):  # type: ignore[no-untyped-def]
    root = tmp_path / "blobs"
    root.mkdir()
    sha256 = DiskBlobStore(root).put(session=None, content="zawartość załącznika".encode())  # type: ignore[arg-type]
    final = root / sha256[:2] / sha256[2:4] / sha256
    assert final.read_bytes() == "zawartość załącznika".encode()
    assert journal_of_syncs == [
        ("fsync", str(root)),  # the new ROOT/ab is in ROOT
        ("fsync", str(final.parent.parent)),  # the new ROOT/ab/cd is in ROOT/ab
        ("fsync", str(final.with_name(f".{sha256}.{os.getpid()}.tmp"))),  # the data
        ("rename", str(final)),
        ("fsync", str(final.parent)),  # the name
    ]
    assert not list(final.parent.glob(".*.tmp"))


def test_a_second_file_in_an_existing_directory_syncs_only_its_own_steps(tmp_path: Path, journal_of_syncs):  # type: ignore[no-untyped-def]
    write_file(tmp_path / "new" / "a", b"a", temporary=tmp_path / "a.tmp")
    journal_of_syncs.clear()
    write_file(tmp_path / "new" / "b", b"b", temporary=tmp_path / "b.tmp")
    assert journal_of_syncs == [
        ("fsync", str(tmp_path / "b.tmp")),
        ("rename", str(tmp_path / "new" / "b")),
        ("fsync", str(tmp_path / "new")),
    ]
