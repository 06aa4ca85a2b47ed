"""The verdict on one message's sender: per method (SPF, DKIM, DMARC, spam) what was found and by whom.

Stored with the message as JSON (`as_json`) and read back (`from_json`), so `cases show --json`, the
staff notification and every later decision see the same values the pipeline acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Source(StrEnum):
    """Where a result came from."""

    TRUSTED_HEADER = "trusted_header"  # Authentication-Results / spam headers of a trusted relay
    OWN_CHECK = "own_check"  # verified here, through GATEWAY_DNS_RESOLVER
    SESSION = "session"  # the SMTP AUTH login or the panel's verified identity
    NOT_CHECKED = "not_checked"  # verification off, not possible for this source, or nothing to check


# RFC 8601 result words; "none" means there was nothing to evaluate (no record, no signature).
PASS = "pass"
FAIL = "fail"
SOFTFAIL = "softfail"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"


class AutoReply(StrEnum):
    """What automatic mail (acknowledgement, attachment notice, stranger notice) a sender may get."""

    FULL = "full"  # authenticated: the usual mail, their subject included
    NUMBER_ONLY = "number_only"  # not authenticated, not failed: the case number, nothing of theirs
    NONE = "none"  # spam, failed SPF/DMARC, policy "authenticated", or the global hourly cap reached


@dataclass(frozen=True)
class MethodResult:
    result: str = NONE  # pass | fail | softfail | neutral | none | temperror | permerror | policy
    source: Source = Source.NOT_CHECKED
    domain: str = ""  # SPF: the checked domain; DKIM: the first passing d=; DMARC: the From domain
    detail: str = ""  # e.g. the DMARC policy "p=reject", the DKIM domains that passed

    def as_json(self) -> dict[str, str]:
        return {"result": self.result, "source": str(self.source), "domain": self.domain, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> MethodResult:
        data = data or {}
        return cls(
            result=str(data.get("result", NONE)),
            source=Source(data.get("source", Source.NOT_CHECKED)),
            domain=str(data.get("domain", "")),
            detail=str(data.get("detail", "")),
        )


@dataclass(frozen=True)
class SpamResult:
    flagged: bool = False
    score: float | None = None
    source: Source = Source.NOT_CHECKED
    detail: str = ""  # which header said so

    def as_json(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "score": self.score, "source": str(self.source), "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SpamResult:
        data = data or {}
        score = data.get("score")
        return cls(
            flagged=bool(data.get("flagged", False)),
            score=float(score) if score is not None else None,
            source=Source(data.get("source", Source.NOT_CHECKED)),
            detail=str(data.get("detail", "")),
        )


@dataclass(frozen=True)
class TrustVerdict:
    spf: MethodResult = field(default_factory=MethodResult)
    dkim: MethodResult = field(default_factory=MethodResult)
    dmarc: MethodResult = field(default_factory=MethodResult)
    spam: SpamResult = field(default_factory=SpamResult)
    # Proven: DMARC pass (or, where the domain publishes no DMARC record, an aligned SPF/DKIM
    # pass), an SMTP AUTH login allowed to send as the From address, or the panel's identity.
    sender_authenticated: bool = False
    authenticated_by: str = ""  # dmarc | aligned_dkim | aligned_spf | smtp_auth | panel | ""
    authserv_id: str = ""  # the trusted Authentication-Results used, if any
    # An SMTP AUTH login that sent with a From it may not use: a forgery attempt by a known login.
    auth_login_mismatch: bool = False
    # A multipart/report: "ours" (at the signed bounce address of the Message-ID it names), else "untrusted".
    delivery_report: str = ""

    @property
    def failed(self) -> bool:
        """SPF or DMARC said the sender is forged (softfail is "probably", not a fail)."""
        return self.spf.result == FAIL or self.dmarc.result == FAIL

    def as_json(self) -> dict[str, Any]:
        return {
            "sender_authenticated": self.sender_authenticated,
            "authenticated_by": self.authenticated_by,
            "authserv_id": self.authserv_id,
            "spf": self.spf.as_json(),
            "dkim": self.dkim.as_json(),
            "dmarc": self.dmarc.as_json(),
            "spam": self.spam.as_json(),
            "auth_login_mismatch": self.auth_login_mismatch,
            "delivery_report": self.delivery_report,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TrustVerdict:
        data = data or {}
        return cls(
            spf=MethodResult.from_json(data.get("spf")),
            dkim=MethodResult.from_json(data.get("dkim")),
            dmarc=MethodResult.from_json(data.get("dmarc")),
            spam=SpamResult.from_json(data.get("spam")),
            sender_authenticated=bool(data.get("sender_authenticated", False)),
            authenticated_by=str(data.get("authenticated_by", "")),
            authserv_id=str(data.get("authserv_id", "")),
            auth_login_mismatch=bool(data.get("auth_login_mismatch", False)),
            delivery_report=str(data.get("delivery_report", "")),
        )

    def summary(self) -> str:
        """One line for staff: "SPF pass, DKIM pass, DMARC pass: sender authenticated"."""
        parts = [f"SPF {self.spf.result}", f"DKIM {self.dkim.result}", f"DMARC {self.dmarc.result}"]
        if self.spam.flagged:
            parts.append("SPAM" + (f" {self.spam.score:g}" if self.spam.score is not None else ""))
        state = "sender authenticated" if self.sender_authenticated else "sender NOT authenticated"
        return ", ".join(parts) + f": {state}"
