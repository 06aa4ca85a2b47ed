"""The migrations build the schema the models describe (no index or column only on one side).

A model change without its migration works in a test that creates tables from the models, and
fails on every database upgraded in place; this catches it (on PostgreSQL too, with
GATEWAY_TEST_BACKEND=postgresql).
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import store.models  # noqa: F401  # the models register their tables in SQLModel.metadata
from store import db


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
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
