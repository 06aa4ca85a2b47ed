"""Threading as SPEC §4 over real SMTP: tokens, References, subject tags, participants, strangers."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage

from sqlmodel import select

from store.db import reading, transaction
from store.models import Case, SecurityEvent, utcnow
from tests.helpers import all_cases, authenticated, case_by_number, make_mail, send, sent_to, settle

CUSTOMER = "jan.kowalski@klient.example"


async def _open_case(gateway, settings, **fields) -> tuple[dict, EmailMessage]:
    first = make_mail(**fields)
    assert (await send(settings, first))[0] == 250
    await settle(gateway, outbox=True)
    case = all_cases(gateway)[-1]
    ack = sent_to(settings, str(first["From"]))[-1]
    return case, ack


async def test_new_mail_opens_a_case_and_the_ack_threads_in_the_customers_client(gateway, settings):
    first = make_mail(sender=CUSTOMER, subject="Nie działa poczta")
    await send(settings, first)
    await settle(gateway, outbox=True)
    [case] = all_cases(gateway)
    assert case["status"] == "open" and case["requester"] == CUSTOMER
    assert case["subject"] == "Nie działa poczta"
    [ack] = sent_to(settings, CUSTOMER)
    assert f"[#{case['number']}]" in ack["Subject"]
    assert ack["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in ack["References"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["Reply-To"].addresses[0].addr_spec.startswith("bok+")
    # the stored copy shows the sender as people read it, not as encoded on the wire
    assert case["messages"][1]["from"] == "Biuro Obsługi Klienta <bok@example.test>"


async def test_reply_by_references_lands_in_the_same_case(gateway, settings):
    case, ack = await _open_case(gateway, settings, sender=CUSTOMER)
    reply = make_mail(sender=CUSTOMER, subject="odpowiedź bez tagu", in_reply_to=ack["Message-ID"])
    await send(settings, reply)
    await settle(gateway)
    [only] = all_cases(gateway)
    assert only["number"] == case["number"]
    assert [m["direction"] for m in only["messages"]] == ["inbound", "outbound", "inbound"]


async def test_reply_by_mangled_subject_tag_lands_in_the_same_case(gateway, settings):
    case, _ = await _open_case(gateway, settings, sender=CUSTOMER)
    subject = f"Re: RE: Odp: AW: Fwd: [#{case['number']}] Potwierdzenie"
    await send(settings, make_mail(sender=CUSTOMER, subject=subject))
    await settle(gateway)
    assert len(all_cases(gateway)) == 1
    assert case_by_number(gateway, case["number"])["message_count"] == 3


async def test_signed_reply_address_threads_without_any_other_clue(gateway, settings):
    case, ack = await _open_case(gateway, settings, sender=CUSTOMER)
    reply_address = ack["Reply-To"].addresses[0].addr_spec
    reply = make_mail(sender=CUSTOMER, to=reply_address, subject="całkiem nowy temat")
    await send(settings, reply, recipients=[reply_address])
    await settle(gateway)
    # One case, and the reply is in it (a dropped reply would also leave one case).
    [only] = all_cases(gateway)
    assert only["number"] == case["number"]
    assert str(reply["Message-ID"]).strip("<>") in [m["message_id"] for m in only["messages"]]


async def test_a_token_cannot_be_used_by_someone_else(gateway, settings):
    case, ack = await _open_case(gateway, settings, sender=CUSTOMER)
    reply_address = ack["Reply-To"].addresses[0].addr_spec
    await send(
        settings,
        make_mail(sender="intruz@zly.example", to=reply_address, subject="hej"),
        recipients=[reply_address],
    )
    await settle(gateway)
    assert len(all_cases(gateway)) == 2
    assert case_by_number(gateway, case["number"])["message_count"] == 2


async def test_stranger_quoting_a_case_number_gets_a_case_of_their_own(gateway, settings):
    case, _ = await _open_case(gateway, settings, sender=CUSTOMER, subject="Moje dane")
    before = case_by_number(gateway, case["number"])
    stranger = "ciekawski@obcy.example"
    await send(settings, make_mail(sender=stranger, subject=f"Re: [#{case['number']}] Moje dane"))
    await settle(gateway, outbox=True)
    after = case_by_number(gateway, case["number"])
    assert after["message_count"] == before["message_count"]
    assert after["updated_at"] == before["updated_at"]
    cases_now = all_cases(gateway)
    assert len(cases_now) == 2
    own = cases_now[-1]
    assert own["requester"] == stranger and own["number"] != case["number"]
    # the stranger is told about their own case only
    [notice] = sent_to(settings, stranger)
    rendered = notice.as_string()
    assert own["number"] in rendered and case["number"] not in notice.get_body(("plain",)).get_content()
    with reading(gateway.components.engine) as session:
        [event] = session.exec(select(SecurityEvent)).all()
    assert event.sender == stranger and event.kind == "foreign_case_reference"


async def test_a_participant_on_cc_may_write_into_the_case(gateway, settings):
    colleague = "anna.nowak@klient.example"
    first = make_mail(sender=CUSTOMER, subject="Wspólna sprawa")
    first["Cc"] = colleague
    await send(settings, authenticated(first))  # only authenticated mail makes its Cc participants
    await settle(gateway)
    [case] = all_cases(gateway)
    follow_up = make_mail(sender=colleague, subject=f"Re: [#{case['number']}] Wspólna sprawa")
    await send(settings, follow_up)
    await settle(gateway)
    [only] = all_cases(gateway)
    assert only["number"] == case["number"]
    assert str(follow_up["Message-ID"]).strip("<>") in [m["message_id"] for m in only["messages"]]


async def test_staff_may_write_into_any_case_as_an_internal_note(gateway, settings):
    case, _ = await _open_case(gateway, settings, sender=CUSTOMER)
    await send(settings, make_mail(sender="kto@staff.example.test", subject=f"[#{case['number']}] notatka"))
    await settle(gateway)
    detail = case_by_number(gateway, case["number"])
    assert detail["messages"][-1]["direction"] == "note"


async def _close_case(gateway, number: str, *, days_ago: float) -> None:
    with transaction(gateway.components.engine) as session:
        case = session.exec(select(Case).where(Case.number == number)).one()
        case.status, case.closed_at = "closed", utcnow() - timedelta(days=days_ago)
        session.add(case)


async def test_follow_up_within_the_window_reopens_the_case(gateway, settings):
    case, _ = await _open_case(gateway, settings, sender=CUSTOMER)
    await _close_case(gateway, case["number"], days_ago=3)
    await send(settings, make_mail(sender=CUSTOMER, subject=f"Re: [#{case['number']}] jeszcze jedno"))
    await settle(gateway)
    assert len(all_cases(gateway)) == 1
    assert case_by_number(gateway, case["number"])["status"] == "open"


async def test_follow_up_after_the_window_opens_a_new_case_referring_to_the_old(gateway, settings):
    case, _ = await _open_case(gateway, settings, sender=CUSTOMER)
    await _close_case(gateway, case["number"], days_ago=31)
    await send(settings, make_mail(sender=CUSTOMER, subject=f"Re: [#{case['number']}] wracam po miesiącu"))
    await settle(gateway)
    cases_now = all_cases(gateway)
    assert len(cases_now) == 2
    assert case_by_number(gateway, case["number"])["status"] == "closed"
    with reading(gateway.components.engine) as session:
        old = session.exec(select(Case).where(Case.number == case["number"])).one()
        new = session.exec(select(Case).where(Case.number == cases_now[-1]["number"])).one()
    assert new.follows_case_id == old.id


async def test_the_same_message_twice_is_stored_once(gateway, settings):
    message = make_mail(sender=CUSTOMER)
    await send(settings, message)
    await send(settings, message)  # an MTA retrying after a lost 250
    # the same Message-ID from the same sender, bytes differing by a trace header (IMAP copy)
    copy = make_mail(sender=CUSTOMER, message_id=message["Message-ID"], body=message.get_content())
    copy["Delivered-To"] = "bok@example.test"
    await send(settings, copy)
    await settle(gateway, outbox=True)
    [case] = all_cases(gateway)
    assert [m["direction"] for m in case["messages"]] == ["inbound", "outbound"]
    assert len(sent_to(settings, CUSTOMER)) == 1


async def test_polish_charsets_in_headers_and_bodies(gateway, settings):
    for charset in ("iso-8859-2", "windows-1250", "utf-8"):
        subject = f"Zażółć gęślą jaźń ({charset})"
        body = "Proszę o pomoc: źdźbło, łąka, Świętokrzyskie."
        raw = (
            (
                f"From: =?{charset}?B?{_b64('Łukasz Żółw', charset)}?= <lukasz@klient.example>\r\n"
                f"To: bok@example.test\r\n"
                f"Subject: =?{charset}?B?{_b64(subject, charset)}?=\r\n"
                f"Message-ID: <{charset}-test@klient.example>\r\n"
                "MIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset={charset}\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
            ).encode("ascii")
            + body.encode(charset)
            + b"\r\n"
        )
        await send(settings, raw, mail_from="lukasz@klient.example")
    await settle(gateway)
    cases_now = all_cases(gateway)
    assert [c["subject"] for c in cases_now] == [
        f"Zażółć gęślą jaźń ({c})" for c in ("iso-8859-2", "windows-1250", "utf-8")
    ]
    for case in cases_now:
        inbound = case["messages"][0]
        assert "źdźbło, łąka, Świętokrzyskie" in inbound["text"]
        assert "Łukasz Żółw" in inbound["from"]


def _b64(text: str, charset: str) -> str:
    import base64

    return base64.b64encode(text.encode(charset)).decode()
