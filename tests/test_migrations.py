"""The migrations build the schema the models describe (no index or column only on one side).

A model change without its migration works in a test that creates tables from the models, and
fails on every database upgraded in place; this catches it (on PostgreSQL too, with
GATEWAY_TEST_BACKEND=postgresql).
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import store.models  # noqa: F401  # the models register their tables in SQLModel.metadata
from store import db


def test_the_migrated_schema_matches_the_models(empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url)
    db.upgrade(engine)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            differences = compare_metadata(context, SQLModel.metadata)
        # Tables the migrations keep outside the models (Alembic's own version table) are no difference.
        differences = [d for d in differences if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
        assert differences == []
    finally:
        engine.dispose()


def test_the_head_revision_the_start_up_checks_is_alembics_head(empty_database_url: str) -> None:
    """store.db.upgrade skips Alembic for a database at HEAD_REVISION: it must be the newest migration,
    or a database one migration behind would start without it."""
    engine = db.make_engine(empty_database_url)
    try:
        assert db.current_revision(engine) is None  # a new database
        head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
        assert head == db.HEAD_REVISION
        db.upgrade(engine)
        assert db.current_revision(engine) == head
        db.upgrade(engine)  # at the head already: nothing to do, nothing fails
    finally:
        engine.dispose()
