"""The command line of SPEC §2, run as a real process: ingest, cases, export, quarantine, db."""

from __future__ import annotations

import hashlib
import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from store.db import alembic_config, make_engine
from tests.helpers import REPO, make_mail

CASE_FIELDS = {
    "number",
    "subject",
    "status",
    "requester",
    "category",
    "service",
    "created_at",
    "updated_at",
    "message_count",
}
MESSAGE_FIELDS = {
    "direction",
    "source",
    "message_id",
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "text",
    "auto_generated",
    "raw_sha256",
    "attachments",
}
ATTACHMENT_FIELDS = {"filename", "content_type", "size", "sha256", "refused", "reason"}


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp_path / "none.toml"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_RELAY_URL": f"maildir:{tmp_path / 'sent'}",
    }


def gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_ingest_mbox_and_maildir_then_list_show_and_export(tmp_path: Path, env: dict[str, str]):
    box = mailbox.mbox(tmp_path / "stare.mbox")
    box.add(make_mail(sender="a@klient.example", subject="Z mboxa 1").as_bytes())
    box.add(
        make_mail(
            sender="b@klient.example", subject="Z mboxa 2", attachments=[("umowa.pdf", b"%PDF-1.4 umowa")]
        ).as_bytes()
    )
    box.flush()
    folder = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir_raw = make_mail(sender="c@klient.example", subject="Z maildira").as_bytes()
    folder.add(maildir_raw)
    single = tmp_path / "list.eml"
    single.write_bytes(make_mail(sender="d@klient.example", subject="Z pliku").as_bytes())

    result = gateway(env, "ingest", str(tmp_path / "stare.mbox"), str(tmp_path / "Maildir"), str(single))
    assert result.returncode == 0, result.stderr
    assert "ingested 4 message(s): done 4" in result.stdout

    listed = json.loads(gateway(env, "cases", "list", "--json").stdout)
    assert sorted(case["subject"] for case in listed) == ["Z maildira", "Z mboxa 1", "Z mboxa 2", "Z pliku"]
    assert all(set(case) >= CASE_FIELDS for case in listed)
    assert all(case["status"] == "open" for case in listed)

    number = next(case["number"] for case in listed if case["subject"] == "Z mboxa 2")
    shown = json.loads(gateway(env, "cases", "show", number, "--json").stdout)
    assert set(shown) >= CASE_FIELDS and len(shown["messages"]) == shown["message_count"] == 1
    [message] = shown["messages"]
    assert set(message) >= MESSAGE_FIELDS
    assert message["direction"] == "inbound" and message["auto_generated"] is False
    [attachment] = message["attachments"]
    assert set(attachment) >= ATTACHMENT_FIELDS and attachment["filename"] == "umowa.pdf"
    assert attachment["sha256"] == hashlib.sha256(b"%PDF-1.4 umowa").hexdigest()

    exported = [json.loads(line) for line in gateway(env, "export").stdout.splitlines()]
    assert sorted(case["number"] for case in exported) == sorted(case["number"] for case in listed)
    by_subject = {case["subject"]: case for case in exported}
    assert by_subject["Z maildira"]["messages"][0]["raw_sha256"] == hashlib.sha256(maildir_raw).hexdigest()
    assert not (tmp_path / "sent").exists(), "an import answers nobody unless --notify"

    assert gateway(env, "cases", "show", "1999-000001").returncode == 1


def _break_templates(folder: Path) -> list[Path]:
    """An operator's override of the first mail every new case sends (the acknowledgement, verified
    sender or not), with a mistake in it: processing fails and the bytes stay in quarantine."""
    (folder / "pl").mkdir(parents=True)
    broken = [folder / "pl" / name for name in ("ack.j2", "ack_unverified.j2")]
    for path in broken:
        path.write_text(
            "{% block subject %}{{ no_such_variable }}{% endblock %}{% block text %}x{% endblock %}", encoding="utf-8"
        )
    return broken


def test_a_quarantined_message_is_listed_and_runs_again_after_the_fix(tmp_path: Path, env: dict[str, str]):
    # An operator's template override with a mistake in it: processing fails, the bytes stay.
    broken = _break_templates(tmp_path / "templates")
    env = {**env, "GATEWAY_TEMPLATE_DIR": str(tmp_path / "templates")}
    raw = make_mail(subject="Utknie w kwarantannie").as_bytes()
    (tmp_path / "in.eml").write_bytes(raw)

    result = gateway(env, "ingest", "--notify", str(tmp_path / "in.eml"))
    assert result.returncode == 1 and "quarantined 1" in result.stdout

    [entry] = json.loads(gateway(env, "quarantine", "list", "--json").stdout)
    assert set(entry) == {"id", "source", "raw_sha256", "reason", "received_at"}
    assert entry["raw_sha256"] == hashlib.sha256(raw).hexdigest() and "no_such_variable" in entry["reason"]
    assert json.loads(gateway(env, "cases", "list", "--json").stdout) == []

    for template in broken:  # the fix
        template.unlink()
    retried = gateway(env, "quarantine", "retry", str(entry["id"]))
    assert retried.returncode == 0 and "done 1" in retried.stdout, retried.stderr
    assert json.loads(gateway(env, "quarantine", "list", "--json").stdout) == []
    [case] = json.loads(gateway(env, "cases", "list", "--json").stdout)
    assert case["subject"] == "Utknie w kwarantannie"


def _schema(database_url: str) -> tuple[str | None, set[str]]:
    """(the Alembic revision the database is at, its tables)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            revision = MigrationContext.configure(connection).get_current_revision()
        return revision, tables
    finally:
        engine.dispose()


def test_db_upgrade_brings_an_empty_database_to_head_and_a_second_run_changes_nothing(
    tmp_path: Path, env: dict[str, str], empty_database_url: str
):
    database_url = empty_database_url
    env = {**env, "GATEWAY_DATABASE_URL": database_url}
    engine = make_engine(database_url)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    engine.dispose()
    assert head is not None
    assert _schema(database_url) == (None, set())  # nothing there before

    first = gateway(env, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    revision, tables = _schema(database_url)
    assert revision == head
    assert {"support_case", "message", "outbox_item", "alembic_version"} <= tables

    # Data written between the runs survives the second one.
    (tmp_path / "in.eml").write_bytes(make_mail(subject="Przed drugim upgrade").as_bytes())
    assert gateway(env, "ingest", str(tmp_path / "in.eml")).returncode == 0
    second = gateway(env, "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert _schema(database_url) == (head, tables)
    [case] = json.loads(gateway(env, "cases", "list", "--json").stdout)
    assert case["subject"] == "Przed drugim upgrade"


def test_quarantine_retry_all_runs_every_quarantined_entry_again(tmp_path: Path, env: dict[str, str]):
    broken = _break_templates(tmp_path / "templates")
    env = {**env, "GATEWAY_TEMPLATE_DIR": str(tmp_path / "templates")}
    files = []
    for number in range(3):
        path = tmp_path / f"in{number}.eml"
        path.write_bytes(make_mail(subject=f"Kwarantanna {number}").as_bytes())
        files.append(str(path))
    result = gateway(env, "ingest", "--notify", *files)
    assert result.returncode == 1 and "quarantined 3" in result.stdout, result.stdout
    assert len(json.loads(gateway(env, "quarantine", "list", "--json").stdout)) == 3

    for template in broken:  # the fix
        template.unlink()
    retried = gateway(env, "quarantine", "retry", "--all")
    assert retried.returncode == 0 and "done 3" in retried.stdout, (retried.stdout, retried.stderr)
    assert json.loads(gateway(env, "quarantine", "list", "--json").stdout) == []
    listed = json.loads(gateway(env, "cases", "list", "--json").stdout)
    assert sorted(case["subject"] for case in listed) == [f"Kwarantanna {n}" for n in range(3)]
