"""With SQLite, one database belongs to one journal: a second data directory is refused, a moved one is not.

Processed entries are known by journal id, so a database paired with a fresh journal would take its
new entry #1 for the old #1 and mark it done without storing it: mail lost without a word.
"""

from __future__ import annotations

import shutil

import pytest

from gateway.app import Gateway, JournalMismatch
from tests.helpers import all_cases, make_mail, send, settle


async def test_a_second_data_directory_is_refused_and_a_moved_one_is_not(settings_factory, tmp_path):
    # SQLite on either test pass: with PostgreSQL the journal is a table of the one database.
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    first = settings_factory(database_url=database_url, data_dir=tmp_path / "data-a")
    gateway = Gateway(first)
    await gateway.start()
    try:
        assert (await send(first, make_mail(subject="pierwsza")))[0] == 250
        await settle(gateway)
    finally:
        await gateway.stop()

    other = settings_factory(database_url=database_url, data_dir=tmp_path / "data-b")
    with pytest.raises(JournalMismatch, match="several instances need PostgreSQL"):
        await Gateway(other).start()

    shutil.move(tmp_path / "data-a", tmp_path / "moved")
    moved = settings_factory(database_url=database_url, data_dir=tmp_path / "moved")
    gateway = Gateway(moved)
    await gateway.start()
    try:
        assert (await send(moved, make_mail(subject="druga")))[0] == 250
        await settle(gateway)
        assert sorted(case["subject"] for case in all_cases(gateway)) == ["druga", "pierwsza"]
    finally:
        await gateway.stop()
