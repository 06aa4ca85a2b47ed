"""Which case a message belongs to (SPEC §4), and whether its sender may write into it.

Candidates, first match wins: a signed reply address among the recipients, then any Message-ID of
In-Reply-To/References stored in a case, then a `[#NUMBER]` tag in the subject. A candidate is
accepted only if the sender may write into it; otherwise the message opens a case of its own and
the refused candidate is reported (never revealed to the sender). The case tag itself lives in
gateway.casetag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from gateway.addresses import ReplyAddresses
from gateway.casetag import find_case_number
from gateway.parse import ParsedMessage
from store import cases, directory
from store.models import Case
from store.states import CaseStatus


@dataclass(frozen=True)
class ThreadDecision:
    case: Case | None  # the case to write into; None: open a new one
    via: str  # token | staff_token | references | subject | panel | bounce | new
    refused_case: Case | None = None  # a candidate the sender may not write into
    follows_case: Case | None = None  # closed beyond the reopen window: the new case refers to it


@dataclass(frozen=True)
class _Candidate:
    case: Case
    via: str
    authorised: bool  # already proven by a valid token or the panel's verified identity


@dataclass(frozen=True)
class ThreadQuery:
    """What threading looks at in one message."""

    parsed: ParsedMessage
    recipients: tuple[str, ...]  # envelope and header recipients, lower-case
    is_staff: bool
    panel_account: str | None = None  # the panel's verified identity, for panel mail
    panel_case_number: str | None = None


def decide(
    *, session: Session, query: ThreadQuery, replies: ReplyAddresses, reopen_window: timedelta, now: datetime
) -> ThreadDecision:
    candidate = _find_candidate(session=session, query=query, replies=replies)
    if candidate is None:
        return ThreadDecision(case=None, via="new")
    sender = query.parsed.from_address
    if not (candidate.authorised or query.is_staff or _may_write(session, candidate.case, sender)):
        return ThreadDecision(case=None, via="new", refused_case=candidate.case)
    case = candidate.case
    if case.status == CaseStatus.CLOSED and not query.is_staff:
        closed_at = case.closed_at or case.updated_at
        if now - closed_at > reopen_window:
            return ThreadDecision(case=None, via="new", follows_case=case)
    return ThreadDecision(case=case, via=candidate.via)


def _find_candidate(*, session: Session, query: ThreadQuery, replies: ReplyAddresses) -> _Candidate | None:
    parsed, is_staff = query.parsed, query.is_staff
    if query.panel_case_number is not None:
        case = cases.get_case_by_number(session=session, number=query.panel_case_number)
        if case is not None and query.panel_account is not None and case.account_id == query.panel_account:
            return _Candidate(case=case, via="panel", authorised=True)
    for address in query.recipients:
        token = replies.parse(address)
        if token is None or not replies.verify(token, sender=parsed.from_address):
            continue
        if token.staff and not is_staff:
            continue  # a staff reply address used by someone who is not staff
        case = cases.get_case_by_number(session=session, number=token.number)
        if case is not None:
            return _Candidate(case=case, via="staff_token" if token.staff else "token", authorised=True)
    if parsed.delivery_report is not None and parsed.delivery_report.original_message_id:
        case = cases.find_case_by_message_ids(session=session, message_ids=[parsed.delivery_report.original_message_id])
        if case is not None:
            return _Candidate(case=case, via="bounce", authorised=True)
    case = cases.find_case_by_message_ids(session=session, message_ids=[*parsed.references, *parsed.in_reply_to])
    if case is not None:
        return _Candidate(case=case, via="references", authorised=False)
    number = find_case_number(parsed.subject)
    if number is not None:
        case = cases.get_case_by_number(session=session, number=number)
        if case is not None:
            return _Candidate(case=case, via="subject", authorised=False)
    return None


def _may_write(session: Session, case: Case, sender: str) -> bool:
    if not sender:
        return False
    if sender == case.requester or cases.is_participant(session=session, case_id=case.id or 0, email=sender):
        return True
    return case.account_id is not None and directory.is_account_contact(
        session=session, account_id=case.account_id, email=sender
    )


def has_thread_hints(parsed: ParsedMessage) -> bool:
    """Whether the message says it answers something (a reference or a case tag)."""
    return bool(parsed.in_reply_to or parsed.references or find_case_number(parsed.subject))
