"""Rows inserted from plain values: the pipeline's hot path, without ORM objects.

Building an SQLModel object costs more than inserting its row (Message(...) about 0.17 ms: every
field goes through pydantic and the ORM's instrumentation), and the unit of work flushes the whole
session to learn one id. The pipeline writes five to eight rows per message, so those it never
changes again (messages, attachments, participants, processed entries, outbox rows) go in here:
the model's defaults filled in, every value made storable by the same rules as the before-flush
hook (store.text: no NUL, no lone surrogate, VARCHAR cut to its length), one compiled INSERT per
table. Rows the pipeline goes on changing (the case) stay ORM objects, inserted the same way and
made persistent without being read back (`insert_object`). Rows nothing in the batch reads back
wait for the end of the batch and go in one statement per table (`LaterRows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, TypeVar

from pydantic_core import PydanticUndefined
from sqlalchemy import Insert, event, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import (
    ClassManager,
    ORMExecuteState,
    SessionTransaction,
    configure_mappers,
    make_transient_to_detached,
)
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, SQLModel

from store.text import storable_text, storable_value

_Model = TypeVar("_Model", bound=SQLModel)


@dataclass(frozen=True)
class _Column:
    name: str
    max_length: int | None  # VARCHAR(n)
    default: Any  # a value, or PydanticUndefined
    default_factory: Callable[[], Any] | None


@dataclass(frozen=True)
class _TableInserts:
    columns: tuple[_Column, ...]
    returning_id: Insert | None  # None: the table's key is not a generated `id`
    plain: Insert


@cache
def _inserts(model: type[SQLModel]) -> _TableInserts:
    table = model.metadata.tables[str(model.__tablename__)]
    columns = []
    for column in table.columns:
        if column.name == "id":
            continue
        field = model.model_fields[column.name]
        length = getattr(column.type, "length", None)
        columns.append(
            _Column(
                name=column.name,
                max_length=length if isinstance(length, int) else None,
                default=field.default,
                default_factory=field.default_factory,  # type: ignore[arg-type]  # no validated-data factories here
            )
        )
    returning_id = insert(table).returning(table.c.id) if "id" in table.c else None
    return _TableInserts(tuple(columns), returning_id, insert(table))


def _row(spec: _TableInserts, model: type[SQLModel], values: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in spec.columns:
        if column.name in values:
            value = values[column.name]
        elif column.default_factory is not None:
            value = column.default_factory()
        elif column.default is not PydanticUndefined:
            value = column.default
        else:
            raise TypeError(f"{model.__name__}.{column.name} has no default and no value was given")
        if isinstance(value, str):
            value = storable_text(value)
            if column.max_length is not None and len(value) > column.max_length:
                value = value[: column.max_length]  # what the column holds; the raw bytes keep the rest
        elif isinstance(value, dict | list):
            value = storable_value(value)
        row[column.name] = value
    unknown = values.keys() - {column.name for column in spec.columns} - {"id"}
    if unknown:
        raise TypeError(f"{model.__name__} has no column {sorted(unknown)}")
    return row


def values_of(row: SQLModel) -> dict[str, Any]:
    """The column values of a model object built elsewhere, to insert it from here."""
    return {name: getattr(row, name) for name in type(row).model_fields if name != "id"}


def insert_row(session: Session, model: type[SQLModel], values: dict[str, Any]) -> int:
    """Insert one row of `model` in the session's transaction; returns its id."""
    spec = _inserts(model)
    if spec.returning_id is None:
        raise TypeError(f"{model.__name__} has no generated id: use insert_rows")
    return int(session.connection().execute(spec.returning_id, _row(spec, model, values)).scalar_one())


def insert_object(session: Session, model: type[_Model], values: dict[str, Any]) -> _Model:
    """Insert one row of `model` and return it as a persistent ORM object of the session, for a
    caller that goes on changing it: no SELECT to load it back (the object is built from the
    values inserted; `make_transient_to_detached` makes them its loaded state, so only what
    changes later is written at the next flush)."""
    spec = _inserts(model)
    row = _row(spec, model, values)
    if spec.returning_id is None:
        raise TypeError(f"{model.__name__} has no generated id")
    row_id = int(session.connection().execute(spec.returning_id, row).scalar_one())
    instance = _as_loaded(model, {**row, "id": row_id})
    make_transient_to_detached(instance)
    session.add(instance)
    session.info.setdefault(_INSERTED_KEY, []).append((_current_transaction(session), instance))
    return instance


def new_object(model: type[_Model], values: dict[str, Any]) -> _Model:
    """A transient object of `model`, its defaults filled in, built as insert_object builds one
    (not through the constructor): for a record the caller fills in and inserts by its values."""
    return _as_loaded(model, _row(_inserts(model), model, values))


def _as_loaded(model: type[_Model], row: dict[str, Any]) -> _Model:
    """An object of `model` holding a complete row, built as the ORM builds one it loads from the
    database: the values straight into its __dict__. `model(**row)` set every field through the
    ORM's instrumentation and looked at each default factory, whose signature pydantic inspects on
    every call (sqlmodel 0.0.50, pydantic 2.14): 0.06 ms per case in a loop, about 0.2 ms in the
    pipeline, a seventh of its time in a py-spy profile of `gateway ingest --notify`; this takes
    0.007 ms. The row came from _row (defaults filled, values storable): nothing is left to do."""
    instance: _Model = _class_manager(model).new_instance()
    instance.__dict__.update({name: row[name] for name in model.model_fields if name in row})  # the constructor's order
    object.__setattr__(instance, "__pydantic_fields_set__", set(row))  # as the constructor leaves it
    return instance


@cache
def _class_manager(model: type[SQLModel]) -> ClassManager[Any]:
    configure_mappers()  # as the first query or constructor call would: attribute access needs it
    return sa_inspect(model).class_manager


_INSERTED_KEY = "store.rows.inserted"  # of Session.info: (transaction, object) from insert_object


def _current_transaction(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


@event.listens_for(OrmSession, "after_soft_rollback")
def _forget_rolled_back_work(session: OrmSession, previous_transaction: SessionTransaction) -> None:
    """What this module did in a transaction (or savepoint) that was rolled back goes with it, as
    the ORM's own pending objects do: rows still waiting in LaterRows (else a quarantined entry's
    participants would name a case that no longer exists), and the objects `insert_object` made
    leave the session (else a rolled-back entry's case stayed in the identity map and, on SQLite,
    which hands its id out again, the next case could not be added: SQLAlchemy 2.0's "another
    instance with key ... is already present")."""
    later = LaterRows.of(session)  # type: ignore[arg-type]
    if later is not None:
        later.forget_within(previous_transaction)
    inserted = session.info.get(_INSERTED_KEY)
    if not inserted:
        return
    kept = []
    for started_in, instance in inserted:
        if _within(started_in, previous_transaction):
            if instance in session:
                session.expunge(instance)
        else:
            kept.append((started_in, instance))
    session.info[_INSERTED_KEY] = kept


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_inserted_at_the_end(session: OrmSession, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost: nothing left to roll back
        session.info.pop(_INSERTED_KEY, None)


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def insert_rows(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert several rows of `model` in one statement (their ids are not needed)."""
    if not rows:
        return
    spec = _inserts(model)
    session.connection().execute(spec.plain, [_row(spec, model, values) for values in rows])


# --- rows written at the end of a batch --------------------------------------------------------

_LATER_KEY = "store.rows.later"


@dataclass(frozen=True)
class Dependent:
    """A row that refers to another row written later: `column` takes that row's id."""

    model: type[SQLModel]
    values: dict[str, Any]
    column: str


@dataclass(frozen=True)
class _LaterRow:
    model: type[SQLModel]
    values: dict[str, Any]
    dependents: tuple[Dependent, ...]
    key: str | None  # a unique column of the row, to tell which id the database gave it
    added_in: SessionTransaction | None  # rolled back with it (see _forget_rolled_back_work)


class LaterRows:
    """Rows that nothing in the transaction reads back, inserted together: one INSERT per table for
    a whole batch instead of one per row. The pipeline writes its outbox rows, the case messages
    that carry them and its processed-entry records this way; a statement costs more than the
    row it carries (about 0.2 ms through SQLAlchemy on SQLite, a round trip on PostgreSQL).

    Nothing is lost or read stale for it: the rows go in before the transaction commits (a
    `before_commit` hook, whoever forgets to flush), and before any ORM query that selects from
    one of their tables (a `do_orm_execute` hook, as the ORM's own autoflush does). A query that
    cannot need them says so with `LaterRows.NOT_NEEDED` (the threading lookup: nothing can refer
    yet to the Message-ID of a mail that has not been sent). The pipeline flushes them itself at
    the end of a batch, or of each entry's savepoint, so that a failure stays with its entry."""

    NOT_NEEDED: ClassVar[dict[str, bool]] = {"later_rows_not_needed": True}  # a query's execution options

    def __init__(self) -> None:
        self._rows: list[_LaterRow] = []
        self._tables: set[type[SQLModel]] = set()  # of the rows waiting: what a query is checked against

    @classmethod
    def begin(cls, session: Session) -> LaterRows:
        """Rows added through `add_later` in this session wait for the end of the batch from now on."""
        later = session.info[_LATER_KEY] = cls()
        return later

    @staticmethod
    def of(session: Session) -> LaterRows | None:
        later = session.info.get(_LATER_KEY)
        return later if isinstance(later, LaterRows) else None

    def add(self, row: _LaterRow) -> None:
        self._rows.append(row)
        self._tables.add(row.model)
        self._tables.update(dependent.model for dependent in row.dependents)

    def forget_within(self, transaction: SessionTransaction) -> None:
        """Drop the rows added in `transaction` (or a savepoint of it): it was rolled back."""
        self._rows = [row for row in self._rows if not _within(row.added_in, transaction)]
        self._tables = {model for row in self._rows for model in (row.model, *(d.model for d in row.dependents))}

    def waiting_for(self, models: set[type[Any]]) -> bool:
        return not self._tables.isdisjoint(models)

    def flush(self, session: Session) -> None:
        rows, self._rows = self._rows, []
        self._tables.clear()
        if not rows:
            return
        connection = session.connection()
        dependents: dict[type[SQLModel], list[dict[str, Any]]] = {}
        for model in dict.fromkeys(row.model for row in rows):  # tables in the order first added
            of_model = [row for row in rows if row.model is model]
            spec = _inserts(model)
            prepared = [_row(spec, model, row.values) for row in of_model]
            keyed = [row for row in of_model if row.dependents]
            if not keyed:
                connection.execute(spec.plain, prepared)
                continue
            key = keyed[0].key
            if key is None or spec.returning_id is None or any(row.key != key for row in keyed):
                raise TypeError(f"{model.__name__} rows with dependents need one unique key column and an id")
            # One multi-row INSERT ... RETURNING (insertmanyvalues). SQLite does not promise the
            # order of RETURNING rows (asking SQLAlchemy to sort them makes it insert row by row),
            # so each id is matched to its row by the unique key.
            table = spec.plain.table
            returned = connection.execute(spec.plain.returning(table.c.id, table.c[key]), prepared).all()
            id_of = {row_key: row_id for row_id, row_key in returned}
            for row, inserted in zip(of_model, prepared, strict=True):
                for dependent in row.dependents:
                    refers = {**dependent.values, dependent.column: id_of[inserted[key]]}
                    dependents.setdefault(dependent.model, []).append(refers)
        for dependent_model, dependent_rows in dependents.items():
            insert_rows(session, dependent_model, dependent_rows)


def add_later(
    session: Session,
    model: type[SQLModel],
    values: dict[str, Any],
    *,
    dependents: Sequence[Dependent] = (),
    key: str | None = None,
) -> None:
    """Insert a row at the end of the batch when the session has `LaterRows`, else now. A row with
    `dependents` names its unique `key` column (see LaterRows.flush) and needs `LaterRows`: a
    caller without it inserts the row itself, where it can learn the id."""
    later = LaterRows.of(session)
    if later is not None:
        later.add(_LaterRow(model, values, tuple(dependents), key, _current_transaction(session)))
    elif dependents:
        raise TypeError(f"{model.__name__} rows with dependents are written later only within LaterRows")
    else:
        insert_rows(session, model, [values])


@event.listens_for(OrmSession, "do_orm_execute")
def _flush_before_reading(state: ORMExecuteState) -> None:
    later = LaterRows.of(state.session)  # type: ignore[arg-type]
    if later is None or not state.is_select or state.execution_options.get("later_rows_not_needed"):
        return
    if later.waiting_for({mapper.class_ for mapper in state.all_mappers}):
        later.flush(state.session)  # type: ignore[arg-type]


@event.listens_for(OrmSession, "before_commit")
def _flush_before_commit(session: OrmSession) -> None:
    later = LaterRows.of(session)  # type: ignore[arg-type]
    if later is not None:
        later.flush(session)  # type: ignore[arg-type]
