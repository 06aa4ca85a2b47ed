"""Attachment contents stored once by SHA-256, outside the rows: on disk, or in the database.

The disk store is the embedded default (GATEWAY_DATA_DIR/blobs); the database store is for
deployments where instances share nothing but the database (SPEC §10).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from sqlmodel import Session

from store.durable import write_file
from store.models import Blob


class BlobStore(Protocol):
    def put(self, *, session: Session, content: bytes) -> str: ...

    def get(self, *, session: Session, sha256: str) -> bytes | None: ...

    def delete(self, *, session: Session, sha256: str) -> None: ...


class DiskBlobStore:
    """Files at ROOT/ab/cd/<sha256>, written to a temporary name, fsynced, renamed, and the
    directory fsynced (store.durable): the row that names one is committed right after."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, sha256: str) -> Path:
        return self._root / sha256[:2] / sha256[2:4] / sha256

    def put(self, *, session: Session, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self._path(sha256)
        if path.exists():
            return sha256  # identical contents share storage
        write_file(path, content, temporary=path.with_name(f".{sha256}.{os.getpid()}.tmp"))
        return sha256

    def get(self, *, session: Session, sha256: str) -> bytes | None:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, *, session: Session, sha256: str) -> None:
        # Called after the rows that referenced it are gone (erasure); a file already gone is fine.
        self._path(sha256).unlink(missing_ok=True)


class DatabaseBlobStore:
    """Rows of the `blob` table, written in the caller's transaction."""

    def put(self, *, session: Session, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        if session.get(Blob, sha256) is None:
            session.add(Blob(sha256=sha256, size=len(content), content=content))
        return sha256

    def get(self, *, session: Session, sha256: str) -> bytes | None:
        blob = session.get(Blob, sha256)
        return None if blob is None else blob.content

    def delete(self, *, session: Session, sha256: str) -> None:
        blob = session.get(Blob, sha256)
        if blob is not None:
            session.delete(blob)


def make_blob_store(kind: str, data_dir: Path) -> BlobStore:
    if kind == "database":
        return DatabaseBlobStore()
    return DiskBlobStore(data_dir / "blobs")
