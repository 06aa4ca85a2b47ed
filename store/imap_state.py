"""Where each IMAP mailbox's poller stands (UIDVALIDITY, last journaled UID, the OAuth2 refresh
token it continues from): read and write, no commit."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlmodel import Session

from store.models import ImapState, KeyValue, utcnow


def get_state(*, session: Session, mailbox: str) -> ImapState | None:
    return session.get(ImapState, mailbox)


def save_state(*, session: Session, mailbox: str, uidvalidity: int, last_uid: int) -> None:
    """Record the poller's position; the caller's transaction makes it durable."""
    state = session.get(ImapState, mailbox)
    if state is None:
        state = ImapState(mailbox=mailbox)
    state.uidvalidity = uidvalidity
    state.last_uid = last_uid
    state.updated_at = utcnow()
    session.add(state)


# --- OAuth2 refresh tokens ---------------------------------------------------------------------
# Providers rotate refresh tokens: each refresh may return a new one and retire the old. The newest
# is kept in key_value (no table of its own, no migration), so every instance and every restart
# continues from it. `seed` is a digest of the refresh token in the settings when the chain began:
# when an operator configures a new one (after re-consenting), the stored chain no longer applies.

_OAUTH_KEY_PREFIX = "imap-oauth:"


@dataclass(frozen=True)
class StoredRefreshToken:
    seed: str
    refresh_token: str


def oauth_key(mailbox: str) -> str:
    return _OAUTH_KEY_PREFIX + mailbox


def get_refresh_token(*, session: Session, mailbox: str) -> StoredRefreshToken | None:
    row = session.get(KeyValue, oauth_key(mailbox))
    if row is None:
        return None
    try:
        data = json.loads(row.value)
        return StoredRefreshToken(seed=str(data["seed"]), refresh_token=str(data["refresh_token"]))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: start again from the configured token


def save_refresh_token(*, session: Session, mailbox: str, seed: str, refresh_token: str) -> None:
    """Record the newest refresh token of `mailbox`; the caller's transaction makes it durable."""
    value = json.dumps({"seed": seed, "refresh_token": refresh_token})
    row = session.get(KeyValue, oauth_key(mailbox))
    if row is None:
        row = KeyValue(key=oauth_key(mailbox), value=value)
    else:
        row.value = value
    session.add(row)
