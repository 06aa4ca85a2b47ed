"""The pipeline's questions to sender trust, asked at a few fixed points of `Pipeline.process`.

1. `assess` (before the transaction: DNS can be slow): the TrustVerdict of the entry, and the parsed
   message with a delivery report removed unless it is a bounce of ours (it arrived at the signed
   envelope sender of the very Message-ID it names), so threading and the outbox never act on it.
2. `judge` (once threading has decided): security events for refused tokens, forged MACs,
   unauthenticated staff, untrusted reports; spam always opens a case of its own; whether the
   message may add participants; what automatic mail its sender may get (`AutoReply`).
3. `staff_reply_authentic`: SMTP AUTH with a login allowed to send as that From, or DMARC pass for
   a staff address. 4. `after_store`: spam cases get status `spam` and no account (so never in the
   panel); an unverified message from a staff address is kept as a note and staff get a notice.
Unlike the rest of this room it writes rows (security events, outbox), in the caller's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlmodel import Session

from gateway.addresses import ReplyAddresses, TokenCheck
from gateway.metrics import SECURITY_EVENTS, SPAM
from gateway.parse import ParsedMessage
from gateway.settings import Settings
from gateway.trust.assess import Arrival, SenderTrust
from gateway.trust.resolver import Resolver
from gateway.trust.verdict import PASS, AutoReply, TrustVerdict
from store import cases
from store.models import Case, JournalEntry, SecurityEvent
from store.outbox import AutomaticCounts
from store.states import VerdictKind

if TYPE_CHECKING:
    from gateway.outbound.replies import Replies
    from gateway.record import Inbound
    from gateway.threads import ThreadDecision

log = logging.getLogger(__name__)

SPAM_STATUS = "spam"  # support_case.status of a case opened by spam (store.states.CaseStatus.SPAM)
# Threading routes that prove the writer may write into the case by themselves.
_PROVEN_ROUTES = ("token", "staff_token", "panel")


# Templates that name only the case number, for senders who are not authenticated.
_NUMBER_ONLY_TEMPLATES = {"ack": "ack_unverified", "attachment_refused": "attachment_refused_unverified"}


# What of a notice's context may go back to an unproven sender: our limit, and the names and sizes
# of the files refused (a spammer would have to send over 15 MiB for every line of text it buys).
_OUR_CONTEXT = ("limit_bytes", "refused")


def number_only(kind: str, context: dict[str, object]) -> tuple[str, dict[str, object]]:
    """The template and context for an unauthenticated sender: none of their words go back to them."""
    return _NUMBER_ONLY_TEMPLATES.get(kind, kind), {k: v for k, v in context.items() if k in _OUR_CONTEXT}


class TrustGate:
    def __init__(
        self,
        *,
        settings: Settings,
        addresses: ReplyAddresses,
        replies: Replies | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._settings = settings
        self._addresses = addresses
        self._replies = replies
        self._trust = SenderTrust(settings, resolver=resolver)

    # --- 1. before the transaction -------------------------------------------------------------

    def assess(self, entry: JournalEntry, parsed: ParsedMessage) -> tuple[TrustVerdict, ParsedMessage]:
        arrival = Arrival.from_journal(source=entry.source, meta=entry.meta or {})
        verdict = self._trust.assess(
            raw=entry.raw, headers=parsed.headers, from_address=parsed.from_address, arrival=arrival
        )
        report = parsed.delivery_report
        if report is None:
            return verdict, parsed
        if self._bounce_of_ours(entry, parsed, report.original_message_id or ""):
            return replace(verdict, delivery_report="ours"), parsed
        return replace(verdict, delivery_report="untrusted"), replace(parsed, delivery_report=None)

    def _bounce_of_ours(self, entry: JournalEntry, parsed: ParsedMessage, message_id: str) -> bool:
        if not message_id:
            return False  # a report that names nothing cannot be matched to what we sent
        envelope = [str(address) for address in (entry.meta or {}).get("rcpt_tos", [])]
        # IMAP and files have no envelope: the final delivery wrote it into To/Delivered-To.
        candidates = envelope or [*parsed.to, *(v for k, v in parsed.headers if k in ("delivered-to", "x-original-to"))]
        return any(
            self._addresses.check_bounce(address, message_id=message_id) is TokenCheck.VALID for address in candidates
        )

    # --- 2. once threading has decided ---------------------------------------------------------

    def judge(self, session: Session, inbound: Inbound, decision: ThreadDecision) -> tuple[Inbound, ThreadDecision]:
        from gateway.threads import ThreadDecision  # the pipeline's own types; imported late

        trust = inbound.trust
        for kind, detail in self._suspicions(inbound, decision):
            self._event(session, inbound, kind, detail, case=decision.case)
        if inbound.verdict.kind == VerdictKind.SPAM:
            # Spam never writes into an existing case, whatever it quotes: it gets one of its own.
            decision = ThreadDecision(case=None, via="new")
        adds = (
            inbound.verdict.kind not in (VerdictKind.BOUNCE, VerdictKind.SPAM, VerdictKind.LOOP)
            and trust.delivery_report == ""
            # `gateway ingest` is the operator's own import of old correspondence: it vouches for it.
            and (trust.sender_authenticated or decision.via in _PROVEN_ROUTES or inbound.entry.source == "file")
        )
        return replace(inbound, adds_participants=adds, auto_reply=self._auto_reply(session, inbound)), decision

    def _suspicions(self, inbound: Inbound, decision: ThreadDecision) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        sender = inbound.sender
        for address in dict.fromkeys(inbound.recipients):
            token = self._addresses.parse(address)
            if token is None:
                continue
            check = self._addresses.check(token, sender=sender)
            if check is not TokenCheck.VALID:
                found.append((str(check), f"{address} used by {sender or '(no sender)'}"))
            elif token.staff and not self._settings.is_staff(sender):
                found.append(("staff_token_misuse", f"{address} used by {sender or '(no sender)'}"))
        if inbound.trust.delivery_report == "untrusted":
            found.append(("untrusted_report", "a delivery report not sent to the bounce address of what it names"))
        if inbound.trust.auth_login_mismatch:
            login = inbound.entry.meta.get("auth_login")
            found.append(("auth_login_mismatch", f"SMTP AUTH login {login} sent as {sender}"))
        if inbound.verdict.kind == VerdictKind.STAFF and not self.staff_reply_authentic(inbound, decision):
            found.append(("unauthenticated_staff", f"{sender}: {inbound.trust.summary()}"))
        return found

    def _auto_reply(self, session: Session, inbound: Inbound) -> AutoReply:
        trust, policy = inbound.trust, self._settings.auto_reply_policy
        if inbound.verdict.automatic or trust.spam.flagged:
            return AutoReply.NONE
        if policy == "authenticated" and not trust.sender_authenticated:
            return AutoReply.NONE
        if policy == "not-failed" and trust.failed:
            return AutoReply.NONE
        sent = AutomaticCounts.of(session).all_but(self._settings.staff_queue_address)
        if sent >= self._settings.auto_replies_per_hour:
            log.warning("global hourly cap of automatic mail reached (%d): %s gets none", sent, inbound.sender)
            return AutoReply.NONE
        return AutoReply.FULL if trust.sender_authenticated else AutoReply.NUMBER_ONLY

    # --- 3. staff replies ----------------------------------------------------------------------

    def staff_reply_authentic(self, inbound: Inbound, decision: ThreadDecision) -> bool:
        """SMTP AUTH by a login allowed to send as this From; or DMARC pass for a staff address
        on mail to a valid staff reply address (bound to the case, the staff address, and a date)."""
        trust = inbound.trust
        if trust.authenticated_by == "smtp_auth":
            return True  # SenderTrust.may_send_as said yes
        return decision.via == "staff_token" and trust.dmarc.result == PASS and self._settings.is_staff(inbound.sender)

    # --- 4. after the message is stored --------------------------------------------------------

    def after_store(self, session: Session, inbound: Inbound, case: Case, *, is_new: bool) -> None:
        """After a customer message or an unverified staff note is stored (never after a staff reply)."""
        if inbound.verdict.kind == VerdictKind.SPAM:
            SPAM.inc()
            if is_new:
                case.status = SPAM_STATUS
                case.account_id = None  # never in anyone's panel; an operator can release it
                session.add(case)
        elif inbound.verdict.kind == VerdictKind.STAFF:
            self._tell_staff(session, inbound, case)  # the pipeline took it for no staff reply

    def _tell_staff(self, session: Session, inbound: Inbound, case: Case) -> None:
        if self._replies is None:
            return
        from gateway.outbound.replies import Outgoing

        self._replies.queue(
            session=session,
            case=case,
            mail=Outgoing(
                kind="unverified_staff",
                recipient=self._settings.staff_queue_address,
                automatic=True,
                to_staff=True,
                context={
                    "claimed_sender": inbound.sender,
                    "sender_trust": inbound.trust.summary(),
                    "body": inbound.parsed.text,
                },
            ),
        )

    def _event(self, session: Session, inbound: Inbound, kind: str, detail: str, *, case: Case | None) -> None:
        SECURITY_EVENTS.labels(kind=kind).inc()
        log.warning("security event %s: %s", kind, detail, extra={"journal_id": inbound.entry.id})
        cases.record_security_event(
            session=session,
            event=SecurityEvent(
                kind=kind,
                sender=inbound.sender[:320],
                target_case_id=case.id if case is not None else None,
                journal_id=inbound.entry.id,
                detail=detail,
            ),
        )
