"""Retention and erasure through the command line (`gateway purge`, `gateway erase`), on both backends.

Erasure is checked where the bytes really are: the SQLite files (main database, journal, their WAL)
or every table of the PostgreSQL database, and the blob directory. Other customers' data stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from gateway.app import Gateway
from gateway.settings import Settings
from tests.helpers import REPO, make_mail, send, settle

ERASED = "anna.nowak@klient.example"
KEPT = "piotr.zielinski@klient.example"
ERASED_WORD = "Zebrokoliber"  # a word only the erased person's mail contains
KEPT_WORD = "Pszczolojad"


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(settings.data_dir / "absent.toml"),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_DATA_DIR": str(settings.data_dir),
        "GATEWAY_RELAY_URL": settings.relay_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def _show(settings: Settings, number: str) -> dict[str, Any]:
    result = _cli(settings, "cases", "show", number, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _cases(settings: Settings) -> list[dict[str, Any]]:
    result = _cli(settings, "cases", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _two_customers(settings: Settings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    try:
        for sender, word, attachment in (
            (ERASED, ERASED_WORD, b"%PDF-1.4 only-in-the-erased-attachment " + ERASED_WORD.encode()),
            (KEPT, KEPT_WORD, b"%PDF-1.4 only-in-the-kept-attachment " + KEPT_WORD.encode()),
        ):
            mail = make_mail(
                sender=sender,
                subject=f"Faktura {word}",
                body=f"Dzień dobry, w załączniku {word}. Kopia do {KEPT if sender == ERASED else ERASED}.",
                attachments=[(f"{word}.pdf", attachment)],
            )
            code, _ = await send(settings, mail)
            assert code == 250
        await settle(gateway, outbox=True)
    finally:
        await gateway.stop()


def _stored_text(settings: Settings) -> bytes:
    """Everything the gateway keeps, as bytes to search: database contents and the blob files."""
    chunks: list[bytes] = []
    if settings.database_url.startswith("sqlite"):
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        files = [database, *database.parent.glob(database.name + "-*"), *settings.data_dir.glob("journal.db*")]
        chunks += [path.read_bytes() for path in files if path.is_file()]
    else:
        engine = create_engine(settings.database_url)
        with engine.connect() as connection:
            tables = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
            for table in list(tables):
                for row in connection.execute(text(f'SELECT t::text FROM "{table}" t')).scalars():
                    chunks.append(row.encode())
        engine.dispose()
    blobs = settings.data_dir / "blobs"
    chunks += [path.read_bytes() for path in blobs.rglob("*") if path.is_file()]
    return b"\n".join(chunks)


def _forms(value: str) -> list[bytes]:
    # The database may hold it as text or as hex of a bytea column.
    raw = value.encode()
    return [raw, raw.lower(), raw.hex().encode()]


def _contains(haystack: bytes, value: str) -> bool:
    lowered = haystack.lower()
    return any(form.lower() in lowered for form in _forms(value))


async def test_erase_address_leaves_no_byte_of_the_person_and_keeps_the_others(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(blob_store="disk")
    await _two_customers(settings)
    before = _stored_text(settings)
    assert _contains(before, ERASED) and _contains(before, ERASED_WORD)  # the search can find them
    numbers = {case["requester"]: case["number"] for case in _cases(settings)}

    dry = _cli(settings, "erase", "--address", ERASED, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would erase" in dry.stdout
    assert _show(settings, numbers[ERASED])["erased_at"] is None  # a dry run changes nothing

    result = _cli(settings, "erase", "--address", ERASED.upper(), "--actor", "iod@hosting.example")
    assert result.returncode == 0, result.stderr

    after = _stored_text(settings)
    assert not _contains(after, ERASED), "the erased address is still stored"
    assert not _contains(after, ERASED_WORD), "the erased person's text or attachment is still stored"

    tombstone = _show(settings, numbers[ERASED])
    assert tombstone["erased_at"] is not None
    assert tombstone["messages"] == []
    assert tombstone["requester"] == ""

    kept = _show(settings, numbers[KEPT])
    assert kept["erased_at"] is None
    assert kept["requester"] == KEPT
    inbound = [message for message in kept["messages"] if message["direction"] == "inbound"]
    assert KEPT_WORD in inbound[0]["text"]
    assert ERASED not in inbound[0]["text"]  # the mention of the erased person is scrubbed
    assert [a["filename"] for a in inbound[0]["attachments"]] == [f"{KEPT_WORD}.pdf"]
    assert _contains(after, KEPT_WORD)

    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        audit = connection.execute(text("SELECT actor, target_kind, counts FROM erasure_record")).all()
    engine.dispose()
    assert len(audit) == 1
    actor, kind, counts = audit[0]
    assert (actor, kind) == ("iod@hosting.example", "address")
    counts = counts if isinstance(counts, dict) else json.loads(counts)
    assert counts["cases"] == 1 and counts["blobs"] == 1


async def test_erase_case_keeps_the_number_and_frees_its_blobs(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(blob_store="disk")
    await _two_customers(settings)
    numbers = {case["requester"]: case["number"] for case in _cases(settings)}

    result = _cli(settings, "erase", "--case", numbers[KEPT])
    assert result.returncode == 0, result.stderr
    assert not _contains(_stored_text(settings), KEPT_WORD)
    assert _show(settings, numbers[KEPT])["erased_at"] is not None
    assert numbers[KEPT] in [case["number"] for case in _cases(settings)]  # the tombstone is listed
    assert ERASED_WORD in _show(settings, numbers[ERASED])["messages"][0]["text"]

    missing = _cli(settings, "erase", "--case", "1999-999999")
    assert missing.returncode == 1 and "no case" in missing.stderr


async def test_purge_drops_the_bytes_past_retention_and_keeps_the_digests(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    await _two_customers(settings)
    digests = [m["raw_sha256"] for case in _cases(settings) for m in _show(settings, case["number"])["messages"]]

    # Nothing is old enough under the default retention.
    fresh = _cli(settings, "purge")
    assert fresh.returncode == 0, fresh.stderr
    assert "dropped the bytes of 0 journal entries and 0 sent outbox rows" in fresh.stdout

    # With a retention of zero days everything processed and sent is past it.
    env_settings = settings
    os.environ["GATEWAY_JOURNAL_RETENTION_DAYS"] = "0"
    os.environ["GATEWAY_OUTBOX_RETENTION_DAYS"] = "0"
    try:
        dry = _cli(env_settings, "purge", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("would drop the bytes of 2 journal entries")
        done = _cli(env_settings, "purge")
        assert done.stdout.startswith("dropped the bytes of 2 journal entries")
        again = _cli(env_settings, "purge")
        assert again.stdout.startswith("dropped the bytes of 0 journal entries and 0 sent outbox rows")
    finally:
        del os.environ["GATEWAY_JOURNAL_RETENTION_DAYS"], os.environ["GATEWAY_OUTBOX_RETENTION_DAYS"]
    assert "0 sent outbox rows" not in done.stdout  # acknowledgements and notifications were sent

    # The digests are still answered, and the cases are intact.
    assert digests == [
        m["raw_sha256"] for case in _cases(settings) for m in _show(settings, case["number"])["messages"]
    ]
    journal_url = (
        f"sqlite:///{settings.data_dir / 'journal.db'}"
        if settings.database_url.startswith("sqlite")
        else settings.database_url
    )
    engine = create_engine(journal_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT status, length(raw), raw_sha256 FROM journal_entry")).all()
    engine.dispose()
    assert sorted(status for status, _, _ in rows) == ["done", "done"]
    assert [size for _, size, _ in rows] == [0, 0]
    assert sorted(digest for _, _, digest in rows) == sorted(set(digests) & {d for _, _, d in rows})
