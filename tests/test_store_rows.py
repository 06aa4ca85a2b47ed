"""store.rows: the pipeline's Core inserts keep the rules the ORM path keeps (issue 13 item 3).

Rows inserted from plain values bypass the before-flush hook, so they must be made storable by
the same rules (no NUL, no lone surrogate, VARCHAR cut to its length) and get the model's
defaults; on PostgreSQL (GATEWAY_TEST_BACKEND=postgresql) a NUL that slipped through would be a
DataError, a too-long value a StringDataRightTruncation.
"""

from __future__ import annotations

import pytest

from store import db
from store.models import Case, Message, Participant, utcnow
from store.rows import insert_row, insert_rows


def test_values_are_made_storable_and_defaults_filled(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    try:
        with db.transaction(engine) as session:
            case = Case(number="2026-000001", requester="jan@example.pl", subject="s")
            session.add(case)
            session.flush()
            message_id = insert_row(
                session,
                Message,
                {
                    "case_id": case.id,
                    "direction": "inbound",
                    "source": "smtp",
                    "message_id": "nul\x00@example.pl",
                    "sender": "x" * 400,  # VARCHAR(320)
                    "text": "Dzie\u0144 dobry\x00, lone \udc8a surrogate",
                    "defects": ["a\x00b"],
                    "trust": {"summary": "c\x00d"},
                },
            )
            insert_rows(session, Participant, [{"case_id": case.id, "email": "a@example.pl"}])
        with db.reading(engine) as session:
            stored = session.get(Message, message_id)
            assert stored is not None
            assert stored.message_id == "nul@example.pl"
            assert stored.sender == "x" * 320
            assert stored.text == "Dzie\u0144 dobry, lone \ufffd surrogate"
            assert stored.defects == ["ab"]
            assert stored.trust == {"summary": "cd"}
            # Defaults of the model: created_at from its factory, html None, auto_generated False.
            assert stored.html is None and stored.auto_generated is False
            assert abs((utcnow() - stored.created_at).total_seconds()) < 60
    finally:
        engine.dispose()


def test_a_value_without_a_column_or_a_required_column_missing_is_an_error(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    try:
        with pytest.raises(TypeError, match="no column"), db.transaction(engine) as session:
            insert_row(session, Participant, {"case_id": 1, "email": "a@example.pl", "nonsense": 1})
        with pytest.raises(TypeError, match="no default"), db.transaction(engine) as session:
            insert_row(session, Participant, {"email": "a@example.pl"})
    finally:
        engine.dispose()
