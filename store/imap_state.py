"""Where each IMAP mailbox's poller stands (UIDVALIDITY, last journaled UID): read and write, no commit."""

from __future__ import annotations

from sqlmodel import Session

from store.models import ImapState, utcnow


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
