"""SenderTrust.assess(): the arrival facts, the headers and the raw bytes -> one TrustVerdict.

Per method the first of these that applies gives the result: the topmost trusted relay's
Authentication-Results (only when the SMTP peer is in GATEWAY_TRUSTED_RELAYS and the authserv-id
in GATEWAY_TRUSTED_AUTHSERV_IDS), then our own check (GATEWAY_SENDER_VERIFICATION=on), else "none"
/ not checked. SPF is checked only for mail that came straight from the sender's server: behind a
trusted relay our peer is the relay, whose address no sender's SPF record lists.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.settings import Settings
from gateway.trust.checks import aligned, check_dkim, check_spf, dmarc_record, evaluate_dmarc
from gateway.trust.resolver import Budget, LookupFailed, Resolver
from gateway.trust.upstream import UpstreamResults, trusted_authentication_results, upstream_spam
from gateway.trust.verdict import FAIL, NONE, PASS, TEMPERROR, MethodResult, Source, SpamResult, TrustVerdict

_HELO_IN_RECEIVED = re.compile(r"^from\s+(\S+)")
# Sources whose sender can be checked: mail that crossed the internet to reach us.
_CHECKED_SOURCES = ("smtp", "imap")


@dataclass(frozen=True)
class Arrival:
    """How the message reached us, from the journal entry's meta (SMTP) or its source."""

    source: str  # smtp | imap | panel | file
    peer: str = ""  # the SMTP client's IP address
    helo: str = ""
    mail_from: str | None = None  # envelope sender; "" is the null reverse-path
    auth_login: str | None = None  # SMTP AUTH login of the session, if any

    @classmethod
    def from_journal(cls, *, source: str, meta: Mapping[str, Any]) -> Arrival:
        helo = str(meta.get("helo") or "")
        if not helo and (match := _HELO_IN_RECEIVED.match(str(meta.get("received") or ""))):
            helo = match.group(1)
        mail_from = meta.get("mail_from")
        login = meta.get("auth_login") if meta.get("authenticated") else None
        return cls(
            source=source,
            peer=str(meta.get("peer") or ""),
            helo=helo,
            mail_from=None if mail_from is None else str(mail_from).strip().strip("<>"),
            auth_login=str(login).lower() if login else None,
        )


def _networks(entries: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


class SenderTrust:
    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._relays = _networks(settings.trusted_relays)
        self._resolver = resolver or Resolver(settings.dns_resolver)

    def is_trusted_relay(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.strip())
        except ValueError:
            return False
        return any(address in network for network in self._relays)

    def may_send_as(self, login: str, from_address: str) -> bool:
        """An SMTP AUTH login may use its own address as From, and those listed for it in smtp_auth_send_as."""
        login, from_address = login.strip().lower(), from_address.strip().lower()
        if not from_address:
            return False
        allowed = {login, *(a.strip().lower() for a in self._settings.smtp_auth_send_as.get(login, []))}
        return from_address in allowed

    def assess(
        self, *, raw: bytes, headers: tuple[tuple[str, str], ...], from_address: str, arrival: Arrival
    ) -> TrustVerdict:
        relay_trusted = arrival.source == "smtp" and self.is_trusted_relay(arrival.peer)
        upstream = None
        spam = SpamResult()
        if relay_trusted:
            upstream = trusted_authentication_results(headers, authserv_ids=self._settings.trusted_authserv_ids)
            found = upstream_spam(headers, threshold=self._settings.spam_score_threshold)
            if found is not None:
                spam = SpamResult(
                    flagged=found.flagged, score=found.score, source=Source.TRUSTED_HEADER, detail=found.detail
                )
        own = self._settings.sender_verification == "on" and arrival.source in _CHECKED_SOURCES
        budget = Budget.of(self._settings.sender_verification_budget_seconds)
        from_domain = from_address.rpartition("@")[2].lower()

        spf = self._spf(upstream, arrival, own=own and not relay_trusted, budget=budget)
        dkim, dkim_domains = self._dkim(upstream, raw, own=own, budget=budget)
        dmarc = self._dmarc(upstream, from_domain, spf, dkim, dkim_domains, own=own, budget=budget)

        verdict = TrustVerdict(
            spf=spf, dkim=dkim, dmarc=dmarc, spam=spam, authserv_id=upstream.authserv_id if upstream else ""
        )
        return self._authenticate(verdict, from_address=from_address, dkim_domains=dkim_domains, arrival=arrival)

    # --- per method ----------------------------------------------------------------------------

    def _spf(self, upstream: UpstreamResults | None, arrival: Arrival, *, own: bool, budget: Budget) -> MethodResult:
        given = upstream.first("spf") if upstream else None
        if given is not None:
            checked = given.property("smtp.mailfrom") or given.property("smtp.helo")
            return MethodResult(
                result=given.result, source=Source.TRUSTED_HEADER, domain=checked.rpartition("@")[2].lower()
            )
        if not own or arrival.source != "smtp" or not arrival.peer or arrival.mail_from is None:
            return MethodResult()  # IMAP and files: we never saw the sender's server
        return check_spf(
            resolver=self._resolver, budget=budget, ip=arrival.peer, mail_from=arrival.mail_from, helo=arrival.helo
        )

    def _dkim(
        self, upstream: UpstreamResults | None, raw: bytes, *, own: bool, budget: Budget
    ) -> tuple[MethodResult, tuple[str, ...]]:
        given = upstream.methods.get("dkim") if upstream else None
        if given:
            domains = tuple(m.property("header.d") or m.property("header.i").rpartition("@")[2] for m in given)
            passed = tuple(d for m, d in zip(given, domains, strict=True) if m.result == PASS and d)
            result = PASS if passed else given[0].result
            first = passed[0] if passed else domains[0]
            return MethodResult(result=result, source=Source.TRUSTED_HEADER, domain=first, detail=" ".join(passed)), (
                passed
            )
        if not own:
            return MethodResult(), ()
        checked = check_dkim(resolver=self._resolver, budget=budget, raw=raw)
        return checked, tuple(checked.detail.split()) if checked.result == PASS else ()

    def _dmarc(
        self,
        upstream: UpstreamResults | None,
        from_domain: str,
        spf: MethodResult,
        dkim: MethodResult,
        dkim_domains: tuple[str, ...],
        *,
        own: bool,
        budget: Budget,
    ) -> MethodResult:
        given = upstream.first("dmarc") if upstream else None
        if given is not None and given.property("header.from") not in ("", from_domain):
            # The relay judged another From than the one we read (a second From header, say).
            detail = f"the relay's verdict was for {given.property('header.from')}"
            return MethodResult(result=NONE, source=Source.TRUSTED_HEADER, domain=from_domain, detail=detail)
        if given is not None:
            policy = given.property("policy.dmarc") or given.property("policy.policy")
            return MethodResult(
                result=given.result,
                source=Source.TRUSTED_HEADER,
                domain=given.property("header.from") or from_domain,
                detail=f"p={policy}" if policy else "",
            )
        if not from_domain or not (own or (upstream is not None and self._settings.sender_verification == "on")):
            return MethodResult(domain=from_domain)
        try:
            record = dmarc_record(resolver=self._resolver, budget=budget, from_domain=from_domain)
        except LookupFailed as error:
            return MethodResult(result=TEMPERROR, source=Source.OWN_CHECK, domain=from_domain, detail=str(error))
        return evaluate_dmarc(
            record=record,
            from_domain=from_domain,
            spf_result=spf,
            dkim_domains=dkim_domains,
            dkim_result=dkim,
            source=Source.OWN_CHECK,
        )

    # --- the overall answer --------------------------------------------------------------------

    def _authenticate(
        self, verdict: TrustVerdict, *, from_address: str, dkim_domains: tuple[str, ...], arrival: Arrival
    ) -> TrustVerdict:
        if arrival.source == "panel":
            return replace(verdict, sender_authenticated=True, authenticated_by="panel")
        if arrival.auth_login:
            if self.may_send_as(arrival.auth_login, from_address):
                return replace(verdict, sender_authenticated=True, authenticated_by="smtp_auth")
            # A known login writing as somebody else: nothing else this message says can make up for it.
            return replace(verdict, sender_authenticated=False, auth_login_mismatch=True)
        if verdict.dmarc.result == PASS:
            return replace(verdict, sender_authenticated=True, authenticated_by="dmarc")
        if verdict.dmarc.result == FAIL or verdict.spam.flagged:
            return verdict
        # No DMARC record (or it could not be read): an SPF or DKIM pass for the From domain itself
        # proves the same thing DMARC would (RFC 7489 identifier alignment, relaxed).
        from_domain = from_address.rpartition("@")[2].lower()
        if any(aligned(domain, from_domain, strict=False) for domain in dkim_domains):
            return replace(verdict, sender_authenticated=True, authenticated_by="aligned_dkim")
        if verdict.spf.result == PASS and aligned(verdict.spf.domain, from_domain, strict=False):
            return replace(verdict, sender_authenticated=True, authenticated_by="aligned_spf")
        return verdict
