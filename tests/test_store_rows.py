"""store.rows: the pipeline's Core inserts keep the rules the ORM path keeps (issue 13 item 3).

Rows inserted from plain values bypass the before-flush hook, so they must be made storable by
the same rules (no NUL, no lone surrogate, VARCHAR cut to its length) and get the model's
defaults; on PostgreSQL (GATEWAY_TEST_BACKEND=postgresql) a NUL that slipped through would be a
DataError, a too-long value a StringDataRightTruncation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func
from sqlmodel import Session, SQLModel, select

from store import cases, db
from store.models import Case, Message, OutboxItem, Participant, utcnow
from store.rows import Dependent, LaterRows, add_later, insert_object, insert_row, insert_rows


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    migrated = db.make_engine(database_url)  # database_url is at the head revision already
    yield migrated
    migrated.dispose()


def test_values_are_made_storable_and_defaults_filled(engine: Engine) -> None:
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


def test_a_value_without_a_column_or_a_required_column_missing_is_an_error(engine: Engine) -> None:
    with pytest.raises(TypeError, match="no column"), db.transaction(engine) as session:
        insert_row(session, Participant, {"case_id": 1, "email": "a@example.pl", "nonsense": 1})
    with pytest.raises(TypeError, match="no default"), db.transaction(engine) as session:
        insert_row(session, Participant, {"email": "a@example.pl"})


def _case(session: Session, number: str = "2026-000001") -> Case:
    return insert_object(session, Case, {"number": number, "requester": "jan@example.pl", "subject": "s"})


def _outbox_values(case_id: int, message_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "case_id": case_id,
        "kind": "ack",
        "automatic": True,
        "mail_from": "bounces@example.test",
        "recipient": "jan@example.pl",
        "message_id": message_id,
        "raw": b"raw",
        "created_at": now,
        "next_attempt_at": now,
    }


def _message_values(case_id: int, message_id: str) -> dict[str, Any]:
    return {"case_id": case_id, "direction": "outbound", "source": "system", "message_id": message_id}


def _count(session: Session, model: type[SQLModel]) -> int:
    # Core, through the connection: not an ORM query, so it does not make later rows go in.
    return int(session.connection().execute(select(func.count()).select_from(model)).scalar_one())


def test_later_rows_go_in_together_and_carry_their_parents_ids(engine: Engine) -> None:
    with db.transaction(engine) as session:
        case = _case(session)
        assert case.id is not None
        later = LaterRows.begin(session)
        names = [f"m{n}@example.test" for n in range(5)]
        for name in names:
            add_later(
                session,
                OutboxItem,
                _outbox_values(case.id, name),
                dependents=[Dependent(Message, _message_values(case.id, name), "outbox_id")],
                key="message_id",
            )
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        # Nothing written yet: a query that does not need them leaves them waiting...
        assert _count(session, OutboxItem) == 0
        untouched = session.exec(select(Case.id).execution_options(**LaterRows.NOT_NEEDED)).all()
        assert untouched == [case.id] and _count(session, Message) == 0
        # ...an ORM query of their tables has them go in first, as the ORM's autoflush would.
        carried = session.exec(select(Message.message_id, Message.outbox_id)).all()
        outbox_ids = dict(session.exec(select(OutboxItem.message_id, OutboxItem.id)).all())
        assert sorted(carried) == sorted((name, outbox_ids[name]) for name in names)
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) == 2, inserts  # one per table for the five pairs
        later.flush(session)  # nothing left: a no-op
    with db.reading(engine) as session:
        assert len(session.exec(select(Message)).all()) == 5


def test_later_rows_nobody_flushed_go_in_at_commit(engine: Engine) -> None:
    with db.transaction(engine) as session:
        case_id = _case(session).id
        assert case_id is not None
        LaterRows.begin(session)
        add_later(session, Participant, {"case_id": case_id, "email": "a@example.pl"})
        assert _count(session, Participant) == 0
    with db.reading(engine) as session:
        assert session.exec(select(Participant.email)).all() == ["a@example.pl"]


def test_participants_waiting_in_later_rows_are_seen_by_the_participant_queries(engine: Engine) -> None:
    # A case's participants go in with the batch's other rows; an entry later in the same batch
    # that asks whether an address takes part (a reply from a Cc'd colleague), or adds the same
    # address again, must see them (or it would refuse the reply, or break the unique key).
    with db.transaction(engine) as session:
        case_id = _case(session).id
        assert case_id is not None
        LaterRows.begin(session)
        cases.add_participants(session=session, case_id=case_id, emails=["a@example.pl"], new_case=True)
        assert _count(session, Participant) == 0
        assert cases.is_participant(session=session, case_id=case_id, email="a@example.pl")
        cases.add_participants(session=session, case_id=case_id, emails=["a@example.pl", "b@example.pl"])
    with db.reading(engine) as session:
        assert sorted(session.exec(select(Participant.email)).all()) == ["a@example.pl", "b@example.pl"]


@pytest.mark.postgresql_only  # SQLite numbers cases with a counter row, not a sequence
def test_case_numbers_ask_for_the_years_sequence_once_per_connection(engine: Engine) -> None:
    asked_on: list[int] = []  # the DBAPI connection of each existence check

    def record(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "to_regclass" in statement:
            asked_on.append(id(connection.connection.dbapi_connection))

    event.listen(engine, "before_cursor_execute", record)
    numbers = []
    for _ in range(3):  # the pool hands out its connections in turn
        with db.transaction(engine) as session:
            numbers += [cases.next_case_number(session=session, year=2031) for _ in range(3)]
    assert numbers == [f"2031-{n:06d}" for n in range(1, 10)]
    assert asked_on and len(asked_on) == len(set(asked_on)), asked_on


def test_a_row_with_dependents_is_refused_outside_later_rows(engine: Engine) -> None:
    # Without LaterRows nobody would match the parent's id to its dependents: the caller that
    # needs the id inserts the row itself (store.rows.insert_row).
    with db.transaction(engine) as session:
        case_id = _case(session).id
        assert case_id is not None
        name = "alone@example.test"
        dependent = Dependent(Message, _message_values(case_id, name), "outbox_id")
        with pytest.raises(TypeError):
            add_later(session, OutboxItem, _outbox_values(case_id, name), dependents=[dependent], key="message_id")
        assert _count(session, OutboxItem) == 0


def test_insert_object_is_persistent_without_loading_it_back(engine: Engine) -> None:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with db.transaction(engine) as session:
        case = _case(session, "2026-000007")
        assert session.get(Case, case.id) is case  # in the identity map
        case.message_count += 1
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")], statements
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1 and "message_count" in updates[0] and "subject" not in updates[0]
    with db.reading(engine) as session:
        stored = session.exec(select(Case).where(Case.number == "2026-000007")).one()
        assert (stored.message_count, stored.requester, stored.language) == (1, "jan@example.pl", "pl")


def test_insert_object_builds_what_the_constructor_would(engine: Engine) -> None:
    # insert_object builds the object as the ORM loads one, not through Case(...): the two must not
    # differ in anything the pipeline or the panel reads (values, their types, pydantic's view).
    with db.transaction(engine) as session:
        inserted = _case(session, "2026-000008")
        built = Case(**{**inserted.model_dump(), "id": inserted.id})
        assert inserted.model_dump() == built.model_dump()
        assert {name: type(value) for name, value in inserted.model_dump().items()} == {
            name: type(value) for name, value in built.model_dump().items()
        }
        assert inserted.model_fields_set == built.model_fields_set
        assert repr(inserted) == repr(built)


def test_new_object_is_the_constructors_object_with_its_defaults_filled() -> None:
    from store.models import ProcessedEntry
    from store.rows import new_object

    values = {"journal_id": 7, "outcome": "done", "raw_sha256": "ab" * 32, "sender": "jan@example.pl"}
    made, built = new_object(ProcessedEntry, values), ProcessedEntry(**values)
    assert {**made.model_dump(), "processed_at": None} == {**built.model_dump(), "processed_at": None}
    assert made.processed_at is not None and made.message_id is None and made.case_id is None
    made.case_id = 3  # the pipeline fills it in later
    assert made.case_id == 3 and made.model_dump()["case_id"] == 3
