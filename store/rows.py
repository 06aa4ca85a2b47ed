"""Rows inserted from plain values: the pipeline's hot path, without ORM objects.

Building an SQLModel object costs more than inserting its row (Message(...) about 0.17 ms: every
field goes through pydantic and the ORM's instrumentation), and the unit of work flushes the whole
session to learn one id. The pipeline writes five to eight rows per message, so those it never
changes again (messages, attachments, participants, processed entries, outbox rows) go in here:
the model's defaults filled in, every value made storable by the same rules as the before-flush
hook (store.text: no NUL, no lone surrogate, VARCHAR cut to its length), one compiled INSERT per
table. Rows the pipeline goes on changing (the case) stay ORM objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic_core import PydanticUndefined
from sqlalchemy import Insert, insert
from sqlmodel import Session, SQLModel

from store.text import storable_text, storable_value


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


def insert_rows(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert several rows of `model` in one statement (their ids are not needed)."""
    if not rows:
        return
    spec = _inserts(model)
    session.connection().execute(spec.plain, [_row(spec, model, values) for values in rows])
