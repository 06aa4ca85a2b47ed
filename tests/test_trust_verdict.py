"""Who really sent it: the TrustVerdict of mail delivered over real SMTP to the real listener.

DKIM signatures made with a test key, SPF/DKIM/DMARC records served by a throwaway DNS server, and
Authentication-Results / spam headers from a trusted relay (127.0.0.1 in GATEWAY_TRUSTED_RELAYS)
and from an untrusted one (the same headers, 127.0.0.1 not trusted). The verdict is computed from
what the journal holds (the raw bytes and the SMTP arrival facts), as the pipeline computes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.parse import parse_message
from gateway.settings import Settings
from gateway.trust import Arrival, SenderTrust, TrustVerdict
from gateway.trust.resolver import Resolver
from store import journal
from store.db import reading
from tests.helpers import make_mail, send
from tests.servers.dns import DnsServer, dns_server
from tests.trust_helpers import (
    TRUSTED_AUTHSERV_ID,
    DkimKey,
    dkim_signed,
    make_dkim_key,
    publish_test_domains,
    with_headers,
)


@pytest.fixture(scope="module")
def dkim_key() -> DkimKey:
    return make_dkim_key()


@pytest.fixture
def dns(dkim_key: DkimKey) -> Iterator[DnsServer]:
    with dns_server() as server:
        publish_test_domains(server, dkim_key)
        yield server


@pytest.fixture
async def make_gateway(settings_factory, dns: DnsServer):  # type: ignore[no-untyped-def]
    """Start gateways whose own checks ask the test DNS server; all stopped at the end of the test."""
    started: list[Gateway] = []

    async def make(**overrides: Any) -> tuple[Gateway, Settings]:
        values: dict[str, Any] = {
            "dns_resolver": dns.address,
            "sender_verification": "on",
            "trusted_relays": [],  # 127.0.0.1 is trusted only where a test says so
            "trusted_authserv_ids": [TRUSTED_AUTHSERV_ID],
        }
        values.update(overrides)
        settings = settings_factory(**values)
        gateway = Gateway(settings)
        await gateway.start()
        started.append(gateway)
        return gateway, settings

    yield make
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def gw(make_gateway) -> tuple[Gateway, Settings]:  # type: ignore[no-untyped-def]
    return await make_gateway()


@pytest.fixture
async def relay_gw(make_gateway) -> tuple[Gateway, Settings]:  # type: ignore[no-untyped-def]
    return await make_gateway(
        trusted_relays=["127.0.0.1"], trusted_authserv_ids=[TRUSTED_AUTHSERV_ID], sender_verification="off"
    )


async def verdict_of(gateway: Gateway, settings: Settings, raw: bytes, *, mail_from: str) -> TrustVerdict:
    """Deliver over SMTP, then judge what the journal holds, as the pipeline does."""
    code, reply = await send(settings, raw, mail_from=mail_from)
    assert code == 250, reply
    match = re.search(r"queued as (\d+)", reply)
    assert match is not None, reply
    assert gateway.components is not None
    with reading(gateway.components.journal_engine) as session:
        entry = journal.get_entry(session=session, journal_id=int(match.group(1)))
        assert entry is not None
        entry_raw, source, meta = entry.raw, entry.source, dict(entry.meta)
    parsed = parse_message(entry_raw)
    trust = SenderTrust(settings, resolver=Resolver(settings.dns_resolver))
    return trust.assess(
        raw=entry_raw,
        headers=parsed.headers,
        from_address=parsed.from_address,
        arrival=Arrival.from_journal(source=source, meta=meta),
    )


# --- our own checks ------------------------------------------------------------------------------


async def test_dkim_signed_mail_from_an_allowed_server_is_authenticated(gw, dkim_key):
    gateway, settings = gw
    raw = dkim_signed(make_mail(sender="jan@klient.example"), dkim_key)
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert (verdict.spf.result, verdict.dkim.result, verdict.dmarc.result) == ("pass", "pass", "pass")
    assert verdict.spf.source == verdict.dkim.source == verdict.dmarc.source == "own_check"
    assert verdict.dkim.domain == "klient.example"
    assert verdict.dmarc.detail == "p=reject"
    assert verdict.sender_authenticated and verdict.authenticated_by == "dmarc"


async def test_forged_sender_fails_spf_and_dmarc(gw):
    gateway, settings = gw
    raw = make_mail(sender="prezes@bank.example", subject="CHEAP PILLS").as_bytes()
    verdict = await verdict_of(gateway, settings, raw, mail_from="prezes@bank.example")
    assert verdict.spf.result == "fail"
    assert verdict.dkim.result == "none"
    assert verdict.dmarc.result == "fail"
    assert verdict.failed and not verdict.sender_authenticated


async def test_a_body_changed_after_signing_fails_dkim(gw, dkim_key):
    gateway, settings = gw
    raw = dkim_signed(make_mail(sender="jan@klient.example", body="Zapłać na konto 1111."), dkim_key)
    tampered = raw.replace(b"1111", b"6666")
    # Sent from elsewhere as far as SPF knows: only DKIM could have proven it.
    verdict = await verdict_of(gateway, settings, tampered, mail_from="bounce@bank.example")
    assert verdict.dkim.result == "fail"
    assert verdict.dmarc.result == "fail"
    assert not verdict.sender_authenticated


async def test_aligned_spf_pass_without_a_dmarc_record_authenticates(gw):
    gateway, settings = gw
    raw = make_mail(sender="ola@nodmarc.example").as_bytes()
    verdict = await verdict_of(gateway, settings, raw, mail_from="ola@nodmarc.example")
    assert verdict.spf.result == "pass" and verdict.dmarc.result == "none"
    assert verdict.sender_authenticated and verdict.authenticated_by == "aligned_spf"


async def test_spf_pass_for_another_domain_does_not_authenticate_the_from(gw):
    gateway, settings = gw
    raw = make_mail(sender="ola@bank.example").as_bytes()
    verdict = await verdict_of(gateway, settings, raw, mail_from="bounces@nodmarc.example")
    assert verdict.spf.result == "pass"  # the envelope domain allows us ...
    assert verdict.dmarc.result == "fail"  # ... but the From domain is another one
    assert not verdict.sender_authenticated


async def test_an_unreachable_resolver_gives_temperror_never_a_pass(make_gateway, dns, dkim_key):
    gateway, settings = await make_gateway(sender_verification_budget_seconds=1.0)
    dns.silent = True
    raw = dkim_signed(make_mail(sender="jan@klient.example"), dkim_key)
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert verdict.spf.result == "temperror"
    assert verdict.dkim.result == "temperror"
    assert verdict.dmarc.result == "temperror"
    assert not verdict.sender_authenticated and not verdict.failed


async def test_verification_off_checks_nothing(make_gateway, dkim_key):
    gateway, settings = await make_gateway(sender_verification="off")
    raw = dkim_signed(make_mail(sender="jan@klient.example"), dkim_key)
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert (verdict.spf.source, verdict.dkim.source, verdict.dmarc.source) == ("not_checked",) * 3
    assert not verdict.sender_authenticated


# --- a trusted relay's verdict -------------------------------------------------------------------

FORGED_RESULTS = f"Authentication-Results: {TRUSTED_AUTHSERV_ID}; spf=pass smtp.mailfrom=bank.example; dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example"


async def test_trusted_relay_results_count(relay_gw):
    gateway, settings = relay_gw
    raw = with_headers(make_mail(sender="prezes@bank.example").as_bytes(), FORGED_RESULTS)
    verdict = await verdict_of(gateway, settings, raw, mail_from="prezes@bank.example")
    assert verdict.dmarc.result == "pass" and verdict.dmarc.source == "trusted_header"
    assert verdict.authserv_id == TRUSTED_AUTHSERV_ID
    assert verdict.sender_authenticated


async def test_the_same_header_from_an_untrusted_peer_is_ignored(gw):
    gateway, settings = gw  # 127.0.0.1 is not a trusted relay here: the header is the sender's text
    raw = with_headers(make_mail(sender="prezes@bank.example").as_bytes(), FORGED_RESULTS)
    verdict = await verdict_of(gateway, settings, raw, mail_from="prezes@bank.example")
    assert verdict.authserv_id == ""
    assert verdict.dmarc.source == "own_check" and verdict.dmarc.result == "fail"
    assert not verdict.sender_authenticated


async def test_a_trusted_relay_with_an_unknown_authserv_id_is_ignored(relay_gw):
    gateway, settings = relay_gw
    header = FORGED_RESULTS.replace(TRUSTED_AUTHSERV_ID, "mx.attacker.example")
    raw = with_headers(make_mail(sender="prezes@bank.example").as_bytes(), header)
    verdict = await verdict_of(gateway, settings, raw, mail_from="prezes@bank.example")
    assert verdict.dmarc.result == "none" and verdict.dmarc.source == "not_checked"
    assert not verdict.sender_authenticated


async def test_only_the_topmost_trusted_header_counts(relay_gw):
    gateway, settings = relay_gw
    # The sender planted a "pass" with our relay's id; the relay put its real verdict on top.
    planted = with_headers(make_mail(sender="prezes@bank.example").as_bytes(), FORGED_RESULTS)
    raw = with_headers(
        planted,
        f"Authentication-Results: {TRUSTED_AUTHSERV_ID}; spf=fail smtp.mailfrom=bank.example; dmarc=fail header.from=bank.example",
    )
    verdict = await verdict_of(gateway, settings, raw, mail_from="prezes@bank.example")
    assert (verdict.spf.result, verdict.dmarc.result) == ("fail", "fail")
    assert not verdict.sender_authenticated


@pytest.mark.parametrize(
    ("header", "flagged", "score"),
    [
        ("X-Spam-Flag: YES", True, None),
        ("X-Spam-Status: Yes, score=9.1 required=5.0 tests=PILLS", True, 9.1),
        ("X-Spam-Status: No, score=1.2 required=5.0", False, 1.2),
        ("X-Spam: Yes", True, None),
        ("X-Rspamd-Score: 7.5", True, 7.5),
        ("X-Rspamd-Score: 2.0", False, 2.0),
        ("X-Spamd-Result: default: False [5.50 / 15.00]; R_SPF_FAIL(1.00)", True, 5.5),
    ],
)
async def test_spam_headers_of_a_trusted_relay(relay_gw, header, flagged, score):
    gateway, settings = relay_gw
    raw = with_headers(make_mail(sender="jan@klient.example").as_bytes(), header)
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert verdict.spam.flagged is flagged
    assert verdict.spam.score == score
    assert verdict.spam.source == "trusted_header"


async def test_spam_headers_from_an_untrusted_peer_are_ignored(gw):
    gateway, settings = gw
    raw = with_headers(make_mail(sender="jan@klient.example").as_bytes(), "X-Spam-Flag: NO", "X-Spam-Score: -100")
    raw = with_headers(raw, "X-Spam-Status: No, score=-50")
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert verdict.spam.source == "not_checked" and verdict.spam.score is None


async def test_the_spam_threshold_is_configurable(make_gateway):
    gateway, settings = await make_gateway(
        trusted_relays=["127.0.0.0/8"], trusted_authserv_ids=[TRUSTED_AUTHSERV_ID], spam_score_threshold=8.0
    )
    raw = with_headers(make_mail(sender="jan@klient.example").as_bytes(), "X-Rspamd-Score: 7.5")
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert verdict.spam.score == 7.5 and not verdict.spam.flagged


async def test_the_verdict_survives_storage(gw, dkim_key):
    gateway, settings = gw
    raw = dkim_signed(make_mail(sender="jan@klient.example"), dkim_key)
    verdict = await verdict_of(gateway, settings, raw, mail_from="jan@klient.example")
    assert TrustVerdict.from_json(verdict.as_json()) == verdict


async def test_lookups_are_cached_across_messages(gw, dns, dkim_key):
    _gateway, settings = gw
    trust = SenderTrust(settings, resolver=Resolver(settings.dns_resolver))
    for _ in range(3):
        raw = dkim_signed(make_mail(sender="jan@klient.example"), dkim_key)
        parsed = parse_message(raw)
        verdict = trust.assess(
            raw=raw,
            headers=parsed.headers,
            from_address=parsed.from_address,
            arrival=Arrival(source="smtp", peer="127.0.0.1", helo="mx.klient.example", mail_from="jan@klient.example"),
        )
        assert verdict.sender_authenticated
    asked = [name for name, _ in dns.queries]
    assert asked.count("klient.example.") == 1  # SPF
    assert asked.count("sel._domainkey.klient.example.") == 1  # DKIM key
    assert asked.count("_dmarc.klient.example.") == 1


async def test_a_resolver_that_timed_out_is_not_asked_again_for_a_while(gw, dns):
    _gateway, settings = gw
    trust = SenderTrust(settings.model_copy(update={"sender_verification_budget_seconds": 1.0}))
    dns.silent = True
    arrival = Arrival(source="smtp", peer="127.0.0.1", helo="mx.klient.example", mail_from="jan@klient.example")
    raw = make_mail(sender="jan@klient.example").as_bytes()
    parsed = parse_message(raw)
    first = trust.assess(raw=raw, headers=parsed.headers, from_address=parsed.from_address, arrival=arrival)
    asked = len(dns.queries)
    assert asked >= 1 and first.spf.result == "temperror"
    second = trust.assess(raw=raw, headers=parsed.headers, from_address=parsed.from_address, arrival=arrival)
    assert second.spf.result == second.dmarc.result == "temperror"
    assert len(dns.queries) == asked  # the next message did not wait on it again
