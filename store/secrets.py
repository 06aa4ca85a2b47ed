"""Secrets the operator did not set: generated once, kept in the database, shared by every instance."""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from store.models import KeyValue


def get_or_create_secret(*, session: Session, key: str) -> str:
    """The stored value of `key`, creating a random one the first time (first writer wins)."""
    found = session.get(KeyValue, key)
    if found is not None:
        return found.value
    try:
        with session.begin_nested():
            session.add(KeyValue(key=key, value=secrets.token_urlsafe(32)))
    except IntegrityError:
        pass  # another instance created it at the same moment
    stored = session.get(KeyValue, key)
    assert stored is not None
    return stored.value


def get_or_set_value(*, session: Session, key: str, value: str) -> str:
    """The stored value of `key`, storing `value` the first time (first writer wins)."""
    found = session.get(KeyValue, key)
    if found is not None:
        return found.value
    try:
        with session.begin_nested():
            session.add(KeyValue(key=key, value=value))
    except IntegrityError:
        pass  # another process stored its own at the same moment
    stored = session.get(KeyValue, key)
    assert stored is not None
    return stored.value
