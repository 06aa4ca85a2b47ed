"""The loop matrix over real SMTP: automatic mail is stored and never answered (SPEC §6, RFC 3834).

Each kind of automatic mail, the per-sender hourly limit, one of our own messages reflected back to
us, and delivery status notifications (bounces) of our own outgoing mail.
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import select

from gateway.app import Gateway
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Case, OutboxItem, utcnow
from tests.helpers import (
    FIXTURES,
    STAFF_QUEUE,
    SUPPORT,
    all_cases,
    authenticated,
    case_by_number,
    engine_of,
    make_mail,
    parsed,
    parsed_sent,
    send,
    sent_mail,
    sent_to,
    settle,
)

CUSTOMER = "jan.kowalski@klient.example"


def outbox_count(gateway: Gateway) -> int:
    with reading(engine_of(gateway)) as session:
        return len(session.exec(select(OutboxItem)).all())


async def deliver(
    gateway: Gateway,
    settings: Settings,
    message: EmailMessage | bytes,
    *,
    mail_from: str | None = None,
    recipients: list[str] | None = None,
) -> None:
    assert (await send(settings, message, mail_from=mail_from, recipients=recipients))[0] == 250
    await settle(gateway, outbox=True)


# --- the matrix ----------------------------------------------------------------------------------

AUTOMATIC = [
    pytest.param({"headers": {"Auto-Submitted": "auto-replied"}}, id="auto-submitted-auto-replied"),
    pytest.param({"headers": {"Auto-Submitted": "auto-generated"}}, id="auto-submitted-auto-generated"),
    pytest.param(
        {"headers": {"Auto-Submitted": "Auto-Replied; owner-email=x@klient.example"}}, id="auto-submitted-params"
    ),
    pytest.param({"headers": {"Precedence": "bulk"}}, id="precedence-bulk"),
    pytest.param({"headers": {"Precedence": "junk"}}, id="precedence-junk"),
    pytest.param({"headers": {"Precedence": "list"}}, id="precedence-list"),
    pytest.param({"headers": {"List-Id": "Newsletter <news.klient.example>"}}, id="list-id"),
    pytest.param({"headers": {"X-Auto-Response-Suppress": "All"}}, id="x-auto-response-suppress"),
    pytest.param({"headers": {"X-Autoreply": "yes"}}, id="x-autoreply"),
    pytest.param({"headers": {"X-Autorespond": "Out of office"}}, id="x-autorespond"),
    pytest.param({"mail_from": ""}, id="null-reverse-path"),
    pytest.param({"sender": "MAILER-DAEMON@mx.klient.example"}, id="mailer-daemon"),
    pytest.param({"sender": "Mail Delivery System <mailer-daemon@mx.klient.example>"}, id="mailer-daemon-named"),
    pytest.param({"headers": {"X-Support-Gateway-Loop": SUPPORT}}, id="our-loop-marker"),
    pytest.param({"sender": SUPPORT}, id="from-our-support-address"),
    pytest.param({"sender": "bok+2026-000001-abcdefghijklmnop@example.test"}, id="from-our-reply-address"),
    pytest.param({"sender": STAFF_QUEUE}, id="from-our-staff-queue"),
]


@pytest.mark.parametrize("variant", AUTOMATIC)
async def test_automatic_mail_is_stored_but_never_answered(gateway, settings, variant):
    mail_from = variant.get("mail_from")
    message = make_mail(sender=variant.get("sender", CUSTOMER), subject="Automatyczna", headers=variant.get("headers"))
    await deliver(gateway, settings, message, mail_from=mail_from)

    [case] = all_cases(gateway)
    [stored] = case["messages"]
    assert stored["message_id"] == str(message["Message-ID"]).strip("<>")
    assert stored["direction"] == "inbound" and stored["auto_generated"] is True
    assert sent_mail(settings) == []  # no ack, no staff notification: nothing at all
    assert outbox_count(gateway) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "no"},
        {"Auto-Submitted": "No ; comment"},
        {"Precedence": "first-class"},
        {},
    ],
    ids=["auto-submitted-no", "auto-submitted-no-params", "precedence-first-class", "plain"],
)
async def test_mail_from_a_person_is_answered(gateway, settings, headers):
    await deliver(gateway, settings, make_mail(sender=CUSTOMER, headers=headers))
    [case] = all_cases(gateway)
    assert case["messages"][0]["auto_generated"] is False
    assert len(sent_to(settings, CUSTOMER)) == 1  # the acknowledgement
    assert len(sent_to(settings, STAFF_QUEUE)) == 1


async def test_our_automatic_mail_says_it_is_automatic(gateway, settings):
    await deliver(gateway, settings, make_mail(sender=CUSTOMER))
    sent = parsed_sent(settings)
    assert sorted(str(m["To"]) for m in sent) == sorted([CUSTOMER, STAFF_QUEUE])  # the ack and the notification
    for message in sent:
        assert message["Auto-Submitted"] == "auto-replied"
        assert message["X-Auto-Response-Suppress"] == "All"
        assert message["X-Support-Gateway-Loop"] == SUPPORT


# --- the hourly limit ----------------------------------------------------------------------------


async def test_a_storm_from_one_sender_gets_at_most_five_automatic_replies(gateway, settings):
    assert settings.auto_replies_per_sender_per_hour == 5
    for number in range(20):
        assert (await send(settings, make_mail(sender=CUSTOMER, subject=f"Pytanie {number}")))[0] == 250
    await settle(gateway, outbox=True)

    assert len(all_cases(gateway)) == 20  # every message is stored
    assert len(sent_to(settings, CUSTOMER)) == 5
    # Someone else is still answered during the storm: the limit is per sender.
    await deliver(gateway, settings, make_mail(sender="anna@klient.example"))
    assert len(sent_to(settings, "anna@klient.example")) == 1


async def test_the_limit_counts_only_the_last_hour(gateway, settings):
    for number in range(5):
        await send(settings, make_mail(sender=CUSTOMER, subject=f"Pytanie {number}"))
    await settle(gateway, outbox=True)
    with transaction(engine_of(gateway)) as session:
        session.execute(update(OutboxItem).values(created_at=utcnow() - timedelta(minutes=61)))
    await deliver(gateway, settings, make_mail(sender=CUSTOMER, subject="Po godzinie"))
    assert len(sent_to(settings, CUSTOMER)) == 6


# --- our own mail coming back --------------------------------------------------------------------


async def test_our_own_acknowledgement_reflected_back_causes_no_new_mail(gateway, settings):
    await deliver(gateway, settings, make_mail(sender=CUSTOMER))
    [ack_raw] = [raw for raw in sent_mail(settings) if b"To: " + CUSTOMER.encode() in raw]
    before_mail, before_outbox = len(sent_mail(settings)), outbox_count(gateway)

    # A forwarding rule at the customer's sends our acknowledgement straight back to us.
    await deliver(gateway, settings, ack_raw, mail_from=CUSTOMER)
    # ... and a misconfigured MTA returns it with the envelope sender it was sent with.
    await deliver(gateway, settings, ack_raw.replace(b"\nTo: ", b"\nX-Forwarded-To: x\nTo: "), mail_from=SUPPORT)

    assert len(sent_mail(settings)) == before_mail
    assert outbox_count(gateway) == before_outbox
    [case] = all_cases(gateway)  # no case opened for our own mail
    assert case["status"] == "open"


async def test_our_staff_notification_reflected_back_causes_no_new_mail(gateway, settings):
    await deliver(gateway, settings, make_mail(sender=CUSTOMER))
    [notification] = [raw for raw in sent_mail(settings) if b"To: " + STAFF_QUEUE.encode() in raw]
    before = len(sent_mail(settings))
    await deliver(gateway, settings, notification, mail_from=STAFF_QUEUE)
    assert len(sent_mail(settings)) == before
    assert len(all_cases(gateway)) == 1


# --- bounces of our own mail ---------------------------------------------------------------------


def make_dsn(original: bytes, *, action: str = "failed", status: str = "5.1.1", recipient: str = CUSTOMER) -> bytes:
    """A DSN as Postfix writes it: text, message/delivery-status, text/rfc822-headers of the original."""
    headers = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("ascii")
    boundary = "dsn-boundary-1234"
    diagnostic = f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown"
    text = f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.klient.example>
To: {SUPPORT}
Subject: Undelivered Mail Returned to Sender
Date: {formatdate()}
Message-ID: {make_msgid(domain="mx.klient.example")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.klient.example
Arrival-Date: {formatdate()}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--{boundary}
Content-Type: text/rfc822-headers

{headers}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("ascii")


def outbound(gateway: Gateway, case_number: str) -> list[dict[str, Any]]:
    return [m for m in case_by_number(gateway, case_number)["messages"] if m["direction"] == "outbound"]


async def _case_with_ack(gateway: Gateway, settings: Settings) -> tuple[dict[str, Any], bytes]:
    await deliver(gateway, settings, authenticated(make_mail(sender=CUSTOMER)))  # a full acknowledgement
    [case] = all_cases(gateway)
    [ack] = [raw for raw in sent_mail(settings) if b"To: " + CUSTOMER.encode() in raw]
    return case, ack


def _set_status(gateway: Gateway, number: str, status: str, *, closed_days_ago: float | None = None) -> None:
    with transaction(engine_of(gateway)) as session:
        case = session.exec(select(Case).where(Case.number == number)).one()
        case.status = status
        if closed_days_ago is not None:
            case.closed_at = case.updated_at = utcnow() - timedelta(days=closed_days_ago)
        session.add(case)


def return_path(gateway: Gateway) -> list[str]:
    """The signed envelope sender our acknowledgement left with: where its bounce arrives."""
    return [_ack_row(gateway).mail_from]


def _ack_row(gateway: Gateway) -> OutboxItem:
    with reading(engine_of(gateway)) as session:
        return session.exec(select(OutboxItem).where(OutboxItem.kind == "ack")).one()


@pytest.mark.parametrize("status", ["open", "answered", "closed"])
async def test_a_bounce_attaches_to_its_case_and_marks_our_message_failed(gateway, settings, status):
    case, ack = await _case_with_ack(gateway, settings)
    _set_status(gateway, case["number"], status)
    mail_count = len(sent_mail(settings))

    await deliver(gateway, settings, make_dsn(ack), mail_from="", recipients=return_path(gateway))

    [after] = all_cases(gateway)
    assert after["number"] == case["number"] and after["status"] == status  # not reopened, not changed
    bounce = after["messages"][-1]
    assert bounce["direction"] == "inbound" and bounce["auto_generated"] is True
    assert "could not be delivered" in bounce["text"]
    [ack_message] = outbound(gateway, case["number"])
    assert ack_message["delivery_status"] == "failed"
    row = _ack_row(gateway)
    assert row.status == "failed" and "5.1.1" in (row.last_error or "")
    # Never answered; staff hear about it exactly as about a 550 at sending time.
    new_mail = [parsed(raw) for raw in sent_mail(settings)[mail_count:]]
    assert [str(m["To"]) for m in new_mail] == [STAFF_QUEUE]
    assert new_mail[0]["In-Reply-To"] == f"<{row.message_id}>" and CUSTOMER in str(new_mail[0]["Subject"])

    # The same bounce delivered again (another MTA, a retry): still one notice.
    await deliver(gateway, settings, make_dsn(ack, status="5.1.2"), mail_from="", recipients=return_path(gateway))
    assert len(sent_mail(settings)) == mail_count + 1


async def test_a_bounce_for_a_case_closed_long_ago_still_attaches_to_it(gateway, settings):
    case, ack = await _case_with_ack(gateway, settings)
    _set_status(gateway, case["number"], "closed", closed_days_ago=settings.reopen_window_days + 10)
    await deliver(gateway, settings, make_dsn(ack), mail_from="", recipients=return_path(gateway))
    [after] = all_cases(gateway)  # no new case "following" the old one
    assert after["status"] == "closed" and after["message_count"] == 3
    assert outbound(gateway, case["number"])[0]["delivery_status"] == "failed"


async def test_a_delay_notice_does_not_mark_the_message_failed(gateway, settings):
    case, ack = await _case_with_ack(gateway, settings)
    await deliver(
        gateway,
        settings,
        make_dsn(ack, action="delayed", status="4.4.1"),
        mail_from="",
        recipients=return_path(gateway),
    )
    [after] = all_cases(gateway)
    assert after["message_count"] == 3  # stored with the case
    assert outbound(gateway, case["number"])[0]["delivery_status"] == "sent"
    assert _ack_row(gateway).status == "sent"


async def test_an_exim_bounce_returning_our_whole_message(gateway, settings):
    """An Exim-style DSN (tests/fixtures/bounces/) that returns our acknowledgement whole, as
    message/rfc822, and names it in its References: our Message-ID put where the sender's was."""
    case, ack = await _case_with_ack(gateway, settings)
    ack_id = str(parsed(ack)["Message-ID"]).strip("<>")
    raw = (FIXTURES / "bounces" / "exim_returned_message.eml").read_bytes()
    assert raw.count(b"<ORIGINAL-MESSAGE-ID>") == 2  # References and the returned Message-Id
    raw = raw.replace(b"<ORIGINAL-MESSAGE-ID>", f"<{ack_id}>".encode())
    mail_count = len(sent_mail(settings))
    await deliver(gateway, settings, raw, mail_from="", recipients=return_path(gateway))
    [after] = all_cases(gateway)
    assert after["number"] == case["number"]
    assert after["status"] == "open" and after["message_count"] == 3
    assert outbound(gateway, case["number"])[0]["delivery_status"] == "failed"
    row = _ack_row(gateway)
    assert row.status == "failed" and "5.1.1" in (row.last_error or "")
    assert [str(parsed(m)["To"]) for m in sent_mail(settings)[mail_count:]] == [STAFF_QUEUE]  # staff told, nobody else
