"""Every file of shared/corpus through `gateway ingest`: stored byte-exact or quarantined with a reason."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from store.db import make_engine, reading
from store.models import ProcessedEntry
from tests.helpers import CORPUS, REPO

MESSAGE_SUFFIXES = {".eml", ".txt"}


def _gateway(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"optional corpus not found at {CORPUS} (CI has ../shared beside the clone)"
)
def test_every_corpus_message_is_stored_exactly_or_quarantined(tmp_path: Path, database_url: str):
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix.lower() in MESSAGE_SUFFIXES)
    assert len(files) > 150
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp_path / "none.toml"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_RELAY_URL": f"maildir:{tmp_path / 'sent'}",
    }
    result = _gateway(["ingest", *map(str, files)], env)
    assert "ingested" in result.stdout, result.stderr

    exported = _gateway(["export"], env)
    assert exported.returncode == 0, exported.stderr
    stored = {
        message["raw_sha256"]
        for line in exported.stdout.splitlines()
        for message in json.loads(line)["messages"]
        if message["direction"] != "outbound"
    }
    quarantine = json.loads(_gateway(["quarantine", "list", "--json"], env).stdout)
    quarantined = {entry["raw_sha256"]: entry["reason"] for entry in quarantine}
    assert all(reason for reason in quarantined.values())

    # The same message in two files (CRLF and LF copies, say) is one message: the second is kept in
    # the journal as a duplicate of the first, which must itself be stored.
    engine = make_engine(database_url)
    with reading(engine) as session:
        duplicates = {
            entry.raw_sha256: session.get(ProcessedEntry, entry.duplicate_of).raw_sha256
            for entry in session.exec(select(ProcessedEntry).where(ProcessedEntry.outcome == "duplicate"))
        }
    engine.dispose()
    unaccounted = []
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in duplicates:
            digest = duplicates[digest]
        if digest not in stored and digest not in quarantined:
            unaccounted.append(str(path.relative_to(CORPUS)))
    assert unaccounted == []
    # The corpus is messy but parseable: nothing in it should need quarantine.
    assert quarantined == {}
    assert not (tmp_path / "sent").exists(), "an import must not answer anybody"
