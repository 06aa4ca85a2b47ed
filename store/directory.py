"""Repository functions for the directory the panel maintains: accounts, services, contacts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete
from sqlmodel import Session, col, select

from store.models import Account, Contact, Service


def account_for_address(*, session: Session, email: str) -> Account | None:
    """The account whose contact list holds `email` (the first one, if several do)."""
    statement = (
        select(Account)
        .join(Contact, col(Contact.account_id) == col(Account.id))
        .where(Contact.email == email.lower())
        .order_by(col(Account.id))
    )
    return session.exec(statement).first()


def accounts_for_addresses(*, session: Session, emails: Sequence[str]) -> dict[str, Account | None]:
    """account_for_address for several addresses in one query (lower-case address -> account)."""
    wanted = sorted({email.lower() for email in emails if email})
    found: dict[str, Account | None] = dict.fromkeys(wanted)
    if not wanted:
        return found
    statement = (
        select(Contact.email, Account)
        .join(Contact, col(Contact.account_id) == col(Account.id))
        .where(col(Contact.email).in_(wanted))
        .order_by(col(Account.id))
    )
    for email, account in session.exec(statement):
        if found.get(email) is None:
            found[email] = account
    return found


def is_account_contact(*, session: Session, account_id: str, email: str) -> bool:
    statement = select(Contact.id).where(Contact.account_id == account_id, Contact.email == email.lower())
    return session.exec(statement).first() is not None


def get_account(*, session: Session, account_id: str) -> Account | None:
    return session.get(Account, account_id)


def account_services(*, session: Session, account_id: str) -> Sequence[Service]:
    return session.exec(select(Service).where(Service.account_id == account_id).order_by(col(Service.id))).all()


def account_contacts(*, session: Session, account_id: str) -> Sequence[Contact]:
    return session.exec(select(Contact).where(Contact.account_id == account_id).order_by(col(Contact.id))).all()


def replace_account(
    *,
    session: Session,
    account_id: str,
    name: str,
    language: str | None,
    services: Sequence[tuple[str, str]],
    contacts: Sequence[tuple[str, str, str]],
) -> Account:
    """Create or replace an account with its services (id, name) and contacts (kind, name, email)."""
    account = session.get(Account, account_id) or Account(id=account_id)
    account.name = name
    account.language = language
    session.add(account)
    session.flush()
    session.execute(delete(Contact).where(col(Contact.account_id) == account_id))
    session.execute(delete(Service).where(col(Service.account_id) == account_id))
    session.flush()
    for service_id, service_name in services:
        session.add(Service(id=service_id, account_id=account_id, name=service_name))
    for kind, contact_name, email in contacts:
        session.add(Contact(account_id=account_id, kind=kind, name=contact_name, email=email.lower()))
    return account
