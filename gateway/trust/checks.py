"""Our own SPF (pyspf), DKIM (dkimpy) and DMARC (RFC 7489) checks, all through one budgeted `Resolver`.

pyspf and dkimpy each bring their own DNS code bound to the system resolver; both take ours
instead: dkimpy through its `dnsfunc` argument, pyspf through its module-level `DNSLookup` hook,
set once here to a function that reads the resolver and budget of the check running in this
thread (a context variable), so concurrent checks with different resolvers stay apart.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dkim
import spf
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.txtbase import TXTBase
from publicsuffixlist import PublicSuffixList

from gateway.trust.resolver import Budget, LookupFailed, Resolver
from gateway.trust.verdict import FAIL, NONE, PASS, PERMERROR, TEMPERROR, MethodResult, Source

_current: contextvars.ContextVar[tuple[Resolver, Budget] | None] = contextvars.ContextVar(
    "gateway_trust_dns", default=None
)


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 0) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup contract: [((name, qtype), value)], TempError when the lookup fails."""
    current = _current.get()
    if current is None:
        raise spf.TempError("DNS lookups outside a sender check")
    resolver, budget = current
    try:
        records = resolver.lookup(name, qtype, budget)
    except LookupFailed as error:
        raise spf.TempError(f"DNS {error}") from error
    found: list[tuple[tuple[str, str], Any]] = []
    for record in records:
        value: Any
        if isinstance(record, A | AAAA):
            value = record.address
        elif isinstance(record, MX):
            value = (record.preference, record.exchange)
        elif isinstance(record, PTR):
            value = record.target.to_text(True)
        elif isinstance(record, TXTBase):
            value = record.strings
        else:
            continue  # a CNAME on the way: dnspython has already followed it
        found.append(((name, qtype), value))
    return found


spf.DNSLookup = _spf_lookup  # see the module docstring


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list shipped inside the package: no download


def organizational_domain(domain: str) -> str:
    domain = domain.strip(".").lower()
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, *, strict: bool) -> bool:
    if not domain or not from_domain:
        return False
    if strict:
        return domain.lower() == from_domain.lower()
    return organizational_domain(domain) == organizational_domain(from_domain)


def check_spf(*, resolver: Resolver, budget: Budget, ip: str, mail_from: str, helo: str) -> MethodResult:
    """RFC 7208 for the envelope sender (or postmaster@HELO for the null sender)."""
    token = _current.set((resolver, budget))
    try:
        query = spf.query(
            i=ip, s=mail_from, h=helo or "unknown", timeout=max(budget.remaining(), 0.1), querytime=budget.remaining()
        )
        result, _code, explanation = query.check()
    except Exception as error:  # pyspf raises on odd input (an IPv6 zone, a bad HELO)
        return MethodResult(result=PERMERROR, source=Source.OWN_CHECK, detail=f"{type(error).__name__}: {error}")
    finally:
        _current.reset(token)
    domain = mail_from.rpartition("@")[2].lower() if mail_from else (helo or "").lower()
    return MethodResult(result=str(result), source=Source.OWN_CHECK, domain=domain, detail=str(explanation)[:200])


# The end of the header block as dkimpy (1.1) finds it: it splits the message at \r?\n and stops at
# the first empty line.
_HEADER_END = re.compile(rb"\n\r?\n")
_DKIM_SIGNATURE_FIELD = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


def names_a_dkim_signature(raw: bytes) -> bool:
    """Whether the header block has a DKIM-Signature field (true for every message dkimpy finds one
    in, and for a few it would not). dkimpy splits the whole message into lines before it looks: for
    an unsigned 59 MB message that was 0.6 s holding the GIL in the pipeline's thread, while the SMTP
    listener's acknowledgements waited; most mail is unsigned and no longer goes there."""
    end = _HEADER_END.search(raw)
    header_block = raw[: end.start() + 1] if end else raw
    return _DKIM_SIGNATURE_FIELD.search(header_block) is not None


def check_dkim(*, resolver: Resolver, budget: Budget, raw: bytes) -> MethodResult:
    """Every DKIM-Signature: pass if one verifies; the domains that passed, for DMARC alignment."""
    if not names_a_dkim_signature(raw):
        return MethodResult(result=NONE, source=Source.OWN_CHECK)
    failed_lookups: list[str] = []

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        try:
            records = resolver.txt(text.rstrip("."), budget)
        except LookupFailed as error:
            failed_lookups.append(str(error))
            raise dkim.DnsTimeoutError(str(error)) from error
        return records[0] if records else None

    try:
        signer = dkim.DKIM(raw)
    except dkim.DKIMException as error:
        return MethodResult(result=PERMERROR, source=Source.OWN_CHECK, detail=str(error)[:200])
    count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
    if count == 0:
        return MethodResult(result=NONE, source=Source.OWN_CHECK)
    passed: list[str] = []
    errors = 0
    for index in range(count):
        try:
            if signer.verify(idx=index, dnsfunc=dnsfunc):
                passed.append((signer.domain or b"").decode("ascii", "replace").lower())
        except dkim.ValidationError:
            pass  # body hash mismatch, expired, a required header unsigned: a plain fail
        except dkim.DKIMException:
            errors += 1  # unreadable signature or key
    if passed:
        return MethodResult(result=PASS, source=Source.OWN_CHECK, domain=passed[0], detail=" ".join(passed))
    if failed_lookups:
        return MethodResult(result=TEMPERROR, source=Source.OWN_CHECK, detail=failed_lookups[0][:200])
    return MethodResult(result=PERMERROR if errors == count else FAIL, source=Source.OWN_CHECK)


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # none | quarantine | reject
    strict_spf: bool
    strict_dkim: bool


def dmarc_record(*, resolver: Resolver, budget: Budget, from_domain: str) -> DmarcRecord | None:
    """The record of the From domain, else of its organizational domain (RFC 7489 6.6.3)."""
    for domain in dict.fromkeys((from_domain, organizational_domain(from_domain))):
        for text in resolver.txt(f"_dmarc.{domain}", budget):
            if text.lower().replace(b" ", b"").startswith(b"v=dmarc1"):
                tags = _tags(text.decode("ascii", "replace"))
                policy = tags.get("p", "none")
                if domain != from_domain:
                    policy = tags.get("sp", policy)
                return DmarcRecord(
                    policy=policy, strict_spf=tags.get("aspf") == "s", strict_dkim=tags.get("adkim") == "s"
                )
    return None


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for part in text.split(";"):
        key, _, value = part.partition("=")
        if key.strip():
            tags[key.strip().lower()] = value.strip().lower()
    return tags


def evaluate_dmarc(
    *,
    record: DmarcRecord | None,
    from_domain: str,
    spf_result: MethodResult,
    dkim_domains: Iterable[str],
    dkim_result: MethodResult,
    source: Source,
) -> MethodResult:
    """pass when SPF or DKIM passed for a domain aligned with From; temperror when one could not say."""
    if record is None:
        return MethodResult(result=NONE, source=source, domain=from_domain, detail="no DMARC record")
    spf_aligned = spf_result.result == PASS and aligned(spf_result.domain, from_domain, strict=record.strict_spf)
    dkim_aligned = any(aligned(d, from_domain, strict=record.strict_dkim) for d in dkim_domains)
    detail = f"p={record.policy}"
    if spf_aligned or dkim_aligned:
        return MethodResult(result=PASS, source=source, domain=from_domain, detail=detail)
    if TEMPERROR in (spf_result.result, dkim_result.result):
        return MethodResult(result=TEMPERROR, source=source, domain=from_domain, detail=detail)
    return MethodResult(result=FAIL, source=source, domain=from_domain, detail=detail)
