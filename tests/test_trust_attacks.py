"""Issue 11's attacks, each against a running gateway over real SMTP, and the legitimate paths beside them.

Mail is signed with a DKIM test key and checked against SPF/DKIM/DMARC records of a throwaway DNS
server (tests/servers/dns.py); where a test plays the trusted relay in front of us, 127.0.0.1 is in
GATEWAY_TRUSTED_RELAYS and the mail carries that relay's Authentication-Results / spam headers.
Before sender trust every attack here succeeded (the issue's list); each test fails on that code.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib
import pytest
from sqlmodel import select

from gateway.app import Gateway
from gateway.settings import Settings
from store.db import reading
from store.models import OutboxItem
from tests.helpers import (
    STAFF,
    STAFF_QUEUE,
    SUPPORT,
    all_cases,
    case_by_number,
    engine_of,
    make_mail,
    parsed_sent,
    send,
    settle,
)
from tests.servers.dns import DnsServer, dns_server
from tests.trust_helpers import (
    TRUSTED_AUTHSERV_ID,
    DkimKey,
    dkim_signed,
    events,
    make_dkim_key,
    publish_test_domains,
    with_headers,
)

CUSTOMER = "jan@klient.example"  # klient.example: SPF allows 127.0.0.1, DKIM key `sel`, DMARC p=reject
STAFF_MEMBER = "anna@staff.example.test"  # a staff domain with DKIM and DMARC p=reject
PASSWORD = "staff-secret"


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
    """Gateways that check senders themselves (the test DNS server); 127.0.0.1 is not trusted unless asked."""
    started: list[Gateway] = []

    async def make(**overrides: Any) -> tuple[Gateway, Settings]:
        values: dict[str, Any] = {
            "dns_resolver": dns.address,
            "sender_verification": "on",
            "trusted_relays": [],
            "trusted_authserv_ids": [TRUSTED_AUTHSERV_ID],
            "staff_addresses": [STAFF, "@staff.example.test"],
            "smtp_auth_users": {STAFF: PASSWORD},
            "smtp_auth_require_tls": False,  # loopback only; TLS for AUTH is tests/test_smtp_auth.py's
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


async def deliver(
    gateway: Gateway, settings: Settings, raw: EmailMessage | bytes, *, mail_from: str, to: str = SUPPORT
) -> None:
    code, reply = await send(settings, raw, mail_from=mail_from, recipients=[to])
    assert code == 250, reply
    await settle(gateway, outbox=True)


def mail_to(settings: Settings, address: str) -> list[EmailMessage]:
    return [m for m in parsed_sent(settings) if address in str(m["To"])]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def outbox_kinds(gateway: Gateway) -> list[tuple[str, str]]:
    with reading(engine_of(gateway)) as session:
        return [(row.kind, row.recipient) for row in session.exec(select(OutboxItem)).all()]


async def customer_case(gateway: Gateway, settings: Settings, dkim_key: DkimKey) -> tuple[dict[str, Any], str]:
    """An authenticated customer opens a case; returns it and the staff reply address of its notification."""
    await deliver(
        gateway,
        settings,
        dkim_signed(make_mail(sender=CUSTOMER, subject="Nie działa poczta"), dkim_key),
        mail_from=CUSTOMER,
    )
    [case] = all_cases(gateway)
    [notification] = mail_to(settings, STAFF_QUEUE)
    return case, str(notification["Reply-To"].addresses[0].addr_spec)


# --- no backscatter --------------------------------------------------------------------------------


async def test_twenty_forged_senders_get_no_answer_and_are_all_stored(make_gateway):
    gateway, settings = await make_gateway()
    for n in range(20):
        forged = f"ofiara{n}@bank.example"  # bank.example: SPF -all without us, DMARC p=reject
        mail = make_mail(sender=forged, subject="CHEAP PILLS http://pills.example/", body="Buy now")
        await send(settings, mail, mail_from=forged)
    await settle(gateway, outbox=True)
    stored = all_cases(gateway)
    assert len(stored) == 20  # nothing lost
    assert all(m["sender_authenticated"] is False for c in stored for m in c["messages"])
    assert all(c["messages"][0]["authentication"]["dmarc"]["result"] == "fail" for c in stored)
    # Not one automatic answer to a forged address; staff still hear about each message.
    assert [m for m in parsed_sent(settings) if "bank.example" in str(m["To"])] == []
    assert len(mail_to(settings, STAFF_QUEUE)) == 20


async def test_spam_flagged_by_the_trusted_relay_is_stored_as_spam_and_never_answered(make_gateway):
    gateway, settings = await make_gateway(trusted_relays=["127.0.0.1"], sender_verification="off")
    for n in range(10):
        sender = f"spammer{n}@klient.example"
        header = "X-Spam-Flag: YES" if n % 2 else "X-Spam-Status: Yes, score=12.5 required=5.0 tests=PILLS"
        raw = with_headers(make_mail(sender=sender, subject="CHEAP PILLS").as_bytes(), header)
        await send(settings, raw, mail_from=sender)
    await settle(gateway, outbox=True)
    stored = all_cases(gateway)
    assert len(stored) == 10
    assert {c["status"] for c in stored} == {"spam"}
    assert all(c["account"] is None for c in stored)  # so no panel lists them
    assert parsed_sent(settings) == []  # no acknowledgement, no staff notification
    assert outbox_kinds(gateway) == []


async def test_relay_verdict_of_spf_and_dmarc_fail_gets_no_answer(make_gateway):
    gateway, settings = await make_gateway(trusted_relays=["127.0.0.1"], sender_verification="off")
    raw = with_headers(
        make_mail(sender=CUSTOMER, subject="CHEAP PILLS").as_bytes(),
        f"Authentication-Results: {TRUSTED_AUTHSERV_ID}; spf=fail smtp.mailfrom={CUSTOMER}; dmarc=fail header.from=klient.example",
    )
    await deliver(gateway, settings, raw, mail_from=CUSTOMER)
    [case] = all_cases(gateway)
    assert case["messages"][0]["authentication"]["dmarc"]["source"] == "trusted_header"
    assert mail_to(settings, CUSTOMER) == []
    assert len(mail_to(settings, STAFF_QUEUE)) == 1


async def test_an_unverified_sender_gets_the_case_number_and_nothing_of_their_own(make_gateway, dns):
    gateway, settings = await make_gateway()
    dns.silent = True  # no verdict possible: temperror, which "not-failed" lets through
    mail = make_mail(
        sender="Tanie Leki <kupiec@nowhere.example>", subject="CHEAP PILLS http://pills.example/", body="Kup teraz"
    )
    await deliver(gateway, settings, mail, mail_from="kupiec@nowhere.example")
    [case] = all_cases(gateway)
    [ack] = mail_to(settings, "kupiec@nowhere.example")
    text = text_of(ack)
    assert case["number"] in str(ack["Subject"]) and case["number"] in text
    for theirs in ("CHEAP", "pills", "Kup teraz", "Tanie Leki"):
        assert theirs not in str(ack["Subject"]) and theirs not in text


async def test_an_authenticated_customer_is_acknowledged_in_full(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    mail = make_mail(sender=CUSTOMER, subject="Nie działa poczta na domenie")
    await deliver(gateway, settings, dkim_signed(mail, dkim_key), mail_from=CUSTOMER)
    [case] = all_cases(gateway)
    assert case["messages"][0]["sender_authenticated"] is True
    assert case["messages"][0]["authentication"]["dkim"]["result"] == "pass"
    [ack] = mail_to(settings, CUSTOMER)
    assert "Nie działa poczta na domenie" in str(ack["Subject"])
    [notification] = mail_to(settings, STAFF_QUEUE)
    assert "DMARC pass: sender authenticated" in text_of(notification)


async def test_policy_authenticated_answers_only_the_authenticated(make_gateway, dkim_key):
    gateway, settings = await make_gateway(auto_reply_policy="authenticated")
    await deliver(gateway, settings, make_mail(sender="ola@nowhere.example"), mail_from="ola@nowhere.example")
    await deliver(gateway, settings, dkim_signed(make_mail(sender=CUSTOMER), dkim_key), mail_from=CUSTOMER)
    assert mail_to(settings, "ola@nowhere.example") == []
    assert len(mail_to(settings, CUSTOMER)) == 1


async def test_policy_all_answers_even_a_failed_sender_but_with_the_number_only(make_gateway):
    gateway, settings = await make_gateway(auto_reply_policy="all")
    forged = "prezes@bank.example"
    await deliver(gateway, settings, make_mail(sender=forged, subject="CHEAP PILLS"), mail_from=forged)
    [ack] = mail_to(settings, forged)
    assert "CHEAP PILLS" not in str(ack["Subject"]) and "CHEAP PILLS" not in text_of(ack)


async def test_the_global_hourly_cap_holds_whoever_writes(make_gateway):
    gateway, settings = await make_gateway(auto_replies_per_hour=3)
    for n in range(5):
        sender = f"klient{n}@nodmarc.example"  # SPF pass, aligned: authenticated
        await send(settings, make_mail(sender=sender), mail_from=sender)
    await settle(gateway, outbox=True)
    assert len(all_cases(gateway)) == 5
    assert len([m for m in parsed_sent(settings) if "nodmarc.example" in str(m["To"])]) == 3
    assert len(mail_to(settings, STAFF_QUEUE)) == 5  # staff notifications are not automatic replies


# --- bounces only at the signed return path -------------------------------------------------------


def delivery_report(*, reporter: str, original_message_id: str, extra_text: str = "") -> bytes:
    boundary = "report-boundary"
    text = f"""\
From: {reporter}
To: {SUPPORT}
Subject: Undelivered Mail Returned to Sender
Date: {formatdate()}
Message-ID: {make_msgid(domain="mx.evil.example")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered. {extra_text}

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.evil.example

Final-Recipient: rfc822; {CUSTOMER}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--{boundary}
Content-Type: text/rfc822-headers

Message-ID: <{original_message_id}>
From: {SUPPORT}
To: {CUSTOMER}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode()


def ack_row(gateway: Gateway) -> OutboxItem:
    with reading(engine_of(gateway)) as session:
        return session.exec(select(OutboxItem).where(OutboxItem.kind == "ack")).one()


async def test_a_forged_report_changes_nothing_in_the_victims_case(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    ack = ack_row(gateway)
    before = case_by_number(gateway, case["number"])
    mail_count = len(parsed_sent(settings))
    attacker = "phisher@evil.example"
    report = delivery_report(
        reporter=attacker, original_message_id=ack.message_id, extra_text="Log in at http://evil.example/"
    )
    await deliver(gateway, settings, report, mail_from=attacker)
    # ... and one at a real bounce address, but made for another message than the one it names
    other = case_by_number(gateway, case["number"])["messages"][0]["message_id"]
    wrong_token = delivery_report(reporter=attacker, original_message_id=other)
    await deliver(gateway, settings, wrong_token, mail_from=attacker, to=ack.mail_from)

    after = case_by_number(gateway, case["number"])
    assert after["messages"] == before["messages"]  # not stored there, not marked failed
    assert ack_row(gateway).status == "sent"
    # Stored as machine mail of a case of its own: never answered, no failure notice to staff.
    assert len(parsed_sent(settings)) == mail_count
    assert events(gateway, "untrusted_report") == [attacker, attacker]
    # The attacker did not become a participant: his next "Re: [#N]" opens a case of his own.
    await deliver(
        gateway, settings, make_mail(sender=attacker, subject=f"Re: [#{case['number']}] hej"), mail_from=attacker
    )
    assert case_by_number(gateway, case["number"])["messages"] == before["messages"]


async def test_the_real_bounce_at_the_signed_return_path_marks_the_message_failed(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    ack = ack_row(gateway)
    assert ack.mail_from.startswith("bok+b-")
    report = delivery_report(reporter="MAILER-DAEMON@mx.klient.example", original_message_id=ack.message_id)
    await deliver(gateway, settings, report, mail_from="", to=ack.mail_from)
    assert ack_row(gateway).status == "failed"
    after = case_by_number(gateway, case["number"])
    assert after["messages"][-1]["authentication"]["delivery_report"] == "ours"
    assert next(m for m in after["messages"] if m["direction"] == "outbound")["delivery_status"] == "failed"


# --- participants only from mail that proves something ----------------------------------------------


async def test_an_unauthenticated_cc_gains_no_access(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    intruder = "intruz@evil.example"
    # Spoofed as the customer (not signed, and not from klient.example's servers as far as SPF knows).
    spoofed = make_mail(sender=CUSTOMER, subject=f"Re: [#{case['number']}] Nie działa poczta")
    spoofed["Cc"] = intruder
    await deliver(gateway, settings, spoofed, mail_from="bounces@evil.example")
    assert case_by_number(gateway, case["number"])["messages"][-1]["sender_authenticated"] is False
    count = case_by_number(gateway, case["number"])["message_count"]
    await deliver(
        gateway,
        settings,
        make_mail(sender=intruder, subject=f"Re: [#{case['number']}] podaj hasło"),
        mail_from=intruder,
    )
    assert case_by_number(gateway, case["number"])["message_count"] == count  # went to a case of its own
    assert len(all_cases(gateway)) == 2


async def test_an_authenticated_cc_does_become_a_participant(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    colleague = "kolega@nodmarc.example"
    mail = make_mail(sender=CUSTOMER, subject=f"Re: [#{case['number']}] Nie działa poczta")
    mail["Cc"] = colleague
    await deliver(gateway, settings, dkim_signed(mail, dkim_key), mail_from=CUSTOMER)
    count = case_by_number(gateway, case["number"])["message_count"]
    await deliver(
        gateway, settings, make_mail(sender=colleague, subject=f"Re: [#{case['number']}] też"), mail_from=colleague
    )
    assert case_by_number(gateway, case["number"])["message_count"] == count + 1


# --- staff replies must be authenticated -----------------------------------------------------------


async def test_a_forged_staff_from_to_the_staff_reply_address_reaches_no_customer(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, staff_address = await customer_case(gateway, settings, dkim_key)
    before = len(mail_to(settings, CUSTOMER))
    forged = make_mail(sender=f"Anna <{STAFF_MEMBER}>", to=staff_address, body="Proszę podać hasło do panelu.")
    await deliver(gateway, settings, forged, mail_from="x@evil.example", to=staff_address)
    assert len(mail_to(settings, CUSTOMER)) == before  # nothing reached the customer
    note = case_by_number(gateway, case["number"])["messages"][-1]
    assert note["direction"] == "note" and note["sender_authenticated"] is False
    [notice] = [m for m in mail_to(settings, STAFF_QUEUE) if "Niezweryfikowana" in str(m["Subject"])]
    assert STAFF_MEMBER in text_of(notice)
    assert events(gateway, "unauthenticated_staff") == [STAFF_MEMBER]


async def test_a_staff_reply_with_dmarc_pass_reaches_the_customer(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, staff_address = await customer_case(gateway, settings, dkim_key)
    reply = make_mail(sender=f"Anna <{STAFF_MEMBER}>", to=staff_address, body="Skrzynka działa.")
    await deliver(
        gateway,
        settings,
        dkim_signed(reply, dkim_key, domain="staff.example.test"),
        mail_from=STAFF_MEMBER,
        to=staff_address,
    )
    answers = mail_to(settings, CUSTOMER)
    assert "Skrzynka działa." in text_of(answers[-1])
    assert case_by_number(gateway, case["number"])["status"] == "answered"


async def test_a_staff_reply_over_smtp_auth_reaches_the_customer(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    reply = make_mail(sender=STAFF, subject=f"Re: [#{case['number']}] Nie działa poczta", body="Naprawione.")
    async with aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False) as client:
        await client.login(STAFF, PASSWORD)
        await client.send_message(reply, sender=STAFF, recipients=[SUPPORT])
    await settle(gateway, outbox=True)
    assert "Naprawione." in text_of(mail_to(settings, CUSTOMER)[-1])


async def test_an_smtp_auth_login_may_answer_as_an_address_listed_for_it(make_gateway, dkim_key):
    gateway, settings = await make_gateway(smtp_auth_send_as={STAFF: [STAFF_MEMBER]})
    case, _ = await customer_case(gateway, settings, dkim_key)
    reply = make_mail(sender=STAFF_MEMBER, subject=f"Re: [#{case['number']}] Nie działa poczta", body="Zrobione.")
    async with aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False) as client:
        await client.login(STAFF, PASSWORD)
        await client.send_message(reply, sender=STAFF, recipients=[SUPPORT])
    await settle(gateway, outbox=True)
    assert "Zrobione." in text_of(mail_to(settings, CUSTOMER)[-1])


async def test_an_smtp_auth_login_cannot_answer_as_another_staff_member(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    before = len(mail_to(settings, CUSTOMER))
    reply = make_mail(sender=STAFF_MEMBER, subject=f"Re: [#{case['number']}] Nie działa poczta", body="Podszywka.")
    async with aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False) as client:
        await client.login(STAFF, PASSWORD)
        await client.send_message(reply, sender=STAFF, recipients=[SUPPORT])
    await settle(gateway, outbox=True)
    assert len(mail_to(settings, CUSTOMER)) == before
    assert events(gateway, "auth_login_mismatch") == [STAFF_MEMBER]


# --- tokens --------------------------------------------------------------------------------------


async def test_a_forged_reply_token_is_a_security_event(make_gateway, dkim_key):
    gateway, settings = await make_gateway()
    case, _ = await customer_case(gateway, settings, dkim_key)
    forged = f"bok+{case['number']}-aaaaaaaaaaaaaaaa@example.test"
    await deliver(gateway, settings, make_mail(sender="x@evil.example", to=forged), mail_from="x", to=forged)
    assert events(gateway, "forged_mac") == ["x@evil.example"]
    assert len(all_cases(gateway)) == 2  # the forger's mail opened a case of its own
