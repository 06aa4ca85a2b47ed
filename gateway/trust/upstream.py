"""What a trusted relay in front of us already decided: Authentication-Results (RFC 8601) and spam headers.

The caller asks only when the SMTP peer is one of GATEWAY_TRUSTED_RELAYS; every header here is
otherwise text the sender wrote. Of the Authentication-Results headers, the topmost one whose
authserv-id is in GATEWAY_TRUSTED_AUTHSERV_IDS counts: a relay prepends its own above whatever the
message brought along, so a forged copy with the same id sits below it. (The relay must add one
to every message, or strip foreign ones as RFC 8601 section 5 asks.) Copies that do not count stay in
the raw bytes, untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import authres

_SCORE = re.compile(r"score=(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_SPAMD_RESULT = re.compile(r"^\s*\w+\s*:\s*(true|false)\s*\[\s*(-?\d+(?:\.\d+)?)\s*/", re.IGNORECASE)
_SPAM_ACTIONS = ("reject", "add header", "rewrite subject", "soft reject")


@dataclass(frozen=True)
class UpstreamMethod:
    result: str
    properties: tuple[tuple[str, str], ...]  # ("header.d", "klient.example"), ("smtp.mailfrom", ...)

    def property(self, name: str) -> str:
        for key, value in self.properties:
            if key == name:
                return value
        return ""


@dataclass(frozen=True)
class UpstreamResults:
    authserv_id: str
    methods: dict[str, list[UpstreamMethod]]  # "spf" -> results in header order

    def first(self, method: str) -> UpstreamMethod | None:
        found = self.methods.get(method)
        return found[0] if found else None


def trusted_authentication_results(
    headers: Iterable[tuple[str, str]], *, authserv_ids: Iterable[str]
) -> UpstreamResults | None:
    trusted = {authserv_id.strip().lower() for authserv_id in authserv_ids if authserv_id.strip()}
    for name, value in headers:
        if name != "authentication-results":
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
        except (authres.AuthResError, ValueError, IndexError):
            continue  # unreadable: it cannot be the relay's own
        if str(header.authserv_id).strip().lower() not in trusted:
            continue
        methods: dict[str, list[UpstreamMethod]] = {}
        for result in header.results:
            properties = tuple(
                (f"{prop.type}.{prop.name}".lower(), str(prop.value).strip().lower()) for prop in result.properties
            )
            method = UpstreamMethod(result=str(result.result).lower(), properties=properties)
            methods.setdefault(str(result.method).lower(), []).append(method)
        return UpstreamResults(authserv_id=str(header.authserv_id).lower(), methods=methods)
    return None


@dataclass(frozen=True)
class UpstreamSpam:
    flagged: bool
    score: float | None
    detail: str


def upstream_spam(headers: Iterable[tuple[str, str]], *, threshold: float) -> UpstreamSpam | None:
    """SpamAssassin (X-Spam-Flag, X-Spam-Status) and rspamd (X-Spam, X-Rspamd-*, X-Spamd-Result)."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value.strip())
    flagged_by: list[str] = []
    scores: list[float] = []
    if first.get("x-spam-flag", "").lower() in ("yes", "true"):
        flagged_by.append("X-Spam-Flag")
    status = first.get("x-spam-status", "")
    if status:
        if status.lower().startswith("yes"):
            flagged_by.append("X-Spam-Status")
        if match := _SCORE.search(status):
            scores.append(float(match.group(1)))
    if first.get("x-spam", "").lower() in ("yes", "true"):
        flagged_by.append("X-Spam")
    rspamd_score = _number(first.get("x-rspamd-score", ""))
    if rspamd_score is not None:
        scores.append(rspamd_score)
    if match := _SPAMD_RESULT.match(first.get("x-spamd-result", "")):
        if match.group(1).lower() == "true":
            flagged_by.append("X-Spamd-Result")
        scores.append(float(match.group(2)))
    if first.get("x-rspamd-action", "").lower() in _SPAM_ACTIONS:
        flagged_by.append("X-Rspamd-Action")
    if not flagged_by and not scores:
        return None
    score = max(scores) if scores else None
    if score is not None and score >= threshold:
        flagged_by.append(f"score {score:g} >= {threshold:g}")
    return UpstreamSpam(flagged=bool(flagged_by), score=score, detail=", ".join(flagged_by))


def _number(text: str) -> float | None:
    try:
        return float(text.split()[0]) if text.strip() else None
    except ValueError:
        return None
