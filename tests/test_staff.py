"""Staff working from their mail clients (SPEC §7), and threading as the customer's client sees it.

Customer mail -> notification to the staff queue -> a staff member answers it from a Thunderbird-,
Outlook- or Gmail-like client -> the customer gets the staff reply template with only the new text,
from the support address, threaded under their own message. Commands, strangers and auto-close too.
"""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import httpx
import pytest
from sqlmodel import select

from gateway.app import Gateway
from gateway.jobs import auto_close
from gateway.panel.auth import issue_token
from gateway.parse import parse_message
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Case, utcnow
from tests.helpers import (
    STAFF,
    STAFF_QUEUE,
    SUPPORT,
    all_cases,
    authenticated,
    case_by_number,
    engine_of,
    make_mail,
    parsed,
    send,
    sent_mail,
    settle,
)

CUSTOMER = "jan.kowalski@klient.example"
STAFF_NAME = "Anna Nowak"

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # conftest's short secret


# --- helpers ---------------------------------------------------------------------------------------


def mail_to(settings: Settings, address: str) -> list[EmailMessage]:
    return [parsed(raw) for raw in sent_mail(settings) if address in str(parsed(raw)["To"])]


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def attachment_names(message: EmailMessage) -> list[str]:
    return [part.get_filename() or "" for part in message.iter_attachments()]


async def set_english(settings: Settings, customer: str = CUSTOMER) -> None:
    """The customer's account speaks English: set as the panel does it, with PUT /api/accounts."""
    system = issue_token(secret=settings.panel_secret, sub="panel@hosting.example", account="panel", role="system")
    body = {
        "name": "ACME Ltd",
        "language": "en",
        "services": [],
        "contacts": [{"kind": "representative", "name": "John Smith", "email": customer}],
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as http:
        response = await http.put("/api/accounts/acme", json=body, headers={"Authorization": f"Bearer {system}"})
    assert response.status_code == 200, response.text


async def deliver(
    gateway: Gateway, settings: Settings, message: EmailMessage, *, recipients: list[str] | None = None
) -> None:
    assert (await send(settings, message, recipients=recipients))[0] == 250
    await settle(gateway, outbox=True)


async def customer_opens_case(
    gateway: Gateway, settings: Settings, **fields: Any
) -> tuple[dict[str, Any], EmailMessage, EmailMessage]:
    """The customer writes; returns (case, the customer's message, the notification staff got)."""
    first = make_mail(sender=fields.pop("sender", CUSTOMER), **fields)
    await deliver(gateway, settings, first)
    case = all_cases(gateway)[-1]
    notification = [m for m in mail_to(settings, STAFF_QUEUE) if f"[#{case['number']}]" in str(m["Subject"])][-1]
    return case, first, notification


def staff_address_of(notification: EmailMessage) -> str:
    return notification["Reply-To"].addresses[0].addr_spec


def quote_thunderbird(notification: EmailMessage, language: str) -> str:
    quoted = "\n".join(f"> {line}" if line else ">" for line in plain(notification).splitlines())
    if language == "pl":
        return f"W dniu 25.11.2026 o 10:15, Biuro Obsługi Klienta pisze:\n{quoted}\n"
    return f"On 25/11/2026 10:15, Customer Service wrote:\n{quoted}\n"


def quote_outlook(notification: EmailMessage, language: str) -> str:
    fields = (
        ("Od", "Wysłano", "Do", "Temat", "wtorek, 25 listopada 2026 10:15")
        if language == "pl"
        else ("From", "Sent", "To", "Subject", "Tuesday, November 25, 2026 10:15 AM")
    )
    return (
        "________________________________\n"
        f"{fields[0]}: Biuro Obsługi Klienta <{SUPPORT}>\n"
        f"{fields[1]}: {fields[4]}\n"
        f"{fields[2]}: {STAFF_QUEUE}\n"
        f"{fields[3]}: {notification['Subject']}\n\n"
        f"{plain(notification)}"
    )


def quote_gmail(notification: EmailMessage, language: str) -> str:
    quoted = "\n".join(f"> {line}" if line else ">" for line in plain(notification).splitlines())
    return f"wt., 25 lis 2026 o 10:15 Biuro Obsługi Klienta <{SUPPORT}>\nnapisał(a):\n\n{quoted}\n"


LAYOUTS = {"thunderbird": quote_thunderbird, "outlook": quote_outlook, "gmail": quote_gmail}


def staff_answer(
    notification: EmailMessage,
    new_text: str,
    *,
    layout: str = "thunderbird",
    language: str = "pl",
    sender: str = f"{STAFF_NAME} <{STAFF}>",
    attachments: list[tuple[str, bytes]] | None = None,
) -> EmailMessage:
    """A reply to the notification as the staff member's client writes it: new text above the quote."""
    reply = make_mail(
        sender=sender,
        to=staff_address_of(notification),
        subject=("RE: " if layout == "outlook" else "Re: ") + str(notification["Subject"]),
        body=textwrap.dedent(new_text).strip() + "\n\n" + LAYOUTS[layout](notification, language),
        message_id=make_msgid(domain="staff.example.test"),
        attachments=attachments,
    )
    reply["In-Reply-To"] = notification["Message-ID"]
    reply["References"] = f"{notification['References'] or ''} {notification['Message-ID']}".strip()
    return authenticated(reply)  # staff replies must be authenticated: DMARC pass from the trusted relay


async def staff_sends(
    gateway: Gateway, settings: Settings, notification: EmailMessage, new_text: str, **options: Any
) -> EmailMessage:
    reply = staff_answer(notification, new_text, **options)
    await deliver(gateway, settings, reply, recipients=[staff_address_of(notification)])
    return reply


def _status(gateway: Gateway, number: str) -> str:
    return case_by_number(gateway, number)["status"]


# --- the notification ------------------------------------------------------------------------------


async def test_customer_mail_notifies_the_staff_queue(gateway, settings):
    case, first, notification = await customer_opens_case(
        gateway,
        settings,
        body="Nie mogę wysłać poczty, błąd 535.",
        attachments=[("zrzut.png", b"\x89PNG" + b"x" * 500)],
    )
    number = case["number"]
    assert f"[#{number}]" in str(notification["Subject"])
    assert notification["From"].addresses[0].addr_spec == SUPPORT
    staff_address = staff_address_of(notification)
    assert re.fullmatch(rf"bok\+s-{number}-\d{{5,6}}-[a-z2-7]{{16}}@example\.test", staff_address)
    assert "Nie mogę wysłać poczty, błąd 535." in plain(notification)
    assert CUSTOMER in plain(notification)
    assert attachment_names(notification) == ["zrzut.png"]
    [part] = notification.iter_attachments()
    assert part.get_content() == b"\x89PNG" + b"x" * 500
    assert notification["In-Reply-To"] == first["Message-ID"]


# --- the round trip, both languages, several clients -----------------------------------------------


ROUND_TRIPS = [
    pytest.param("pl", "thunderbird", id="pl-thunderbird"),
    pytest.param("pl", "outlook", id="pl-outlook"),
    pytest.param("pl", "gmail", id="pl-gmail"),
    pytest.param("en", "thunderbird", id="en-thunderbird"),
    pytest.param("en", "outlook", id="en-outlook"),
]


@pytest.mark.parametrize(("language", "layout"), ROUND_TRIPS)
async def test_staff_answer_reaches_the_customer_without_the_quote(gateway, settings, language, layout):
    if language == "en":
        await set_english(settings)
    case, first, notification = await customer_opens_case(gateway, settings, body="Router nie działa.")
    greeting = "Dzień dobry," if language == "pl" else "Hello,"
    new_text = f"{greeting}\n\nproszę zrestartować router.\n\nPozdrawiam\nAnna"
    await staff_sends(gateway, settings, notification, new_text, layout=layout, language=language)

    *_, answer = mail_to(settings, CUSTOMER)
    text = plain(answer)
    assert text.startswith(new_text + "\n")
    # Nothing of the quoted notification: not its header, not the customer's text, not the help.
    for leaked in ("Router nie działa.", "pisze:", "wrote:", "napisał", "#close", "Temat:", "Subject:", STAFF_QUEUE):
        assert leaked not in text, leaked
    signature = f"Zgłoszenie nr {case['number']}" if language == "pl" else f"Case {case['number']}."
    assert signature in text and STAFF_NAME in text
    assert f"[#{case['number']}]" in str(answer["Subject"])
    # From the office, never from the staff member; replies go to the customer's signed address.
    assert answer["From"].addresses[0].addr_spec == SUPPORT
    assert STAFF not in answer.as_string()
    assert answer["Reply-To"].addresses[0].addr_spec.startswith(f"bok+{case['number']}-")
    assert answer["Auto-Submitted"] is None  # a person wrote it (RFC 3834)
    assert answer["In-Reply-To"] == first["Message-ID"]

    after = case_by_number(gateway, case["number"])
    assert after["status"] == "answered"
    staff_message = after["messages"][-1]
    assert (staff_message["direction"], staff_message["source"]) == ("outbound", "staff")
    assert staff_message["text"].startswith(new_text)


async def test_customer_writing_again_reopens_and_notifies(gateway, settings):
    case, _first, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "Proszę spróbować teraz.")
    assert _status(gateway, case["number"]) == "answered"
    *_, answer = mail_to(settings, CUSTOMER)

    follow_up = make_mail(
        sender=CUSTOMER, subject=f"Re: {answer['Subject']}", body="Nadal nie działa.", in_reply_to=answer["Message-ID"]
    )
    await deliver(gateway, settings, follow_up)
    assert _status(gateway, case["number"]) == "open"
    *_, second_notification = mail_to(settings, STAFF_QUEUE)
    assert "Nadal nie działa." in plain(second_notification)
    assert "Nowa wiadomość" in str(second_notification["Subject"])
    assert len(mail_to(settings, CUSTOMER)) == 2  # ack and answer; no second ack for a follow-up


async def test_staff_attachments_go_along_within_the_limit(gateway, settings_factory):
    settings = settings_factory(max_attachment_bytes=50_000)
    running = Gateway(settings)
    await running.start()
    try:
        case, _, notification = await customer_opens_case(running, settings)
        small, big = b"%PDF-1.4 " + b"a" * 2_000, b"PK" + b"z" * 80_000
        await staff_sends(
            running,
            settings,
            notification,
            "W załączniku instrukcja.",
            attachments=[("instrukcja.pdf", small), ("logi.zip", big)],
        )
        *_, answer = mail_to(settings, CUSTOMER)
        assert attachment_names(answer) == ["instrukcja.pdf"]
        [part] = answer.iter_attachments()
        assert part.get_content() == small
        # The case keeps them with the answer; the one over the limit is recorded as refused.
        staff_message = case_by_number(running, case["number"])["messages"][-1]
        stored = {a["filename"]: a for a in staff_message["attachments"]}
        assert stored["instrukcja.pdf"]["refused"] is False and stored["instrukcja.pdf"]["size"] == len(small)
        assert stored["logi.zip"]["refused"] is True
    finally:
        await running.stop()


async def test_a_staff_member_of_a_staff_domain_may_answer(gateway, settings):
    _case, _, notification = await customer_opens_case(gateway, settings)
    await staff_sends(
        gateway, settings, notification, "Odpowiedź z domeny zespołu.", sender="Piotr <piotr@staff.example.test>"
    )
    *_, answer = mail_to(settings, CUSTOMER)
    assert plain(answer).startswith("Odpowiedź z domeny zespołu.")
    assert "piotr@staff.example.test" not in answer.as_string()


# --- threading seen from the customer's side ------------------------------------------------------


async def test_ack_and_answer_thread_under_the_customers_message_and_replies_come_back(gateway, settings):
    case, first, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "Sprawdziliśmy, działa.")
    ack, answer = mail_to(settings, CUSTOMER)
    customer_id = str(first["Message-ID"]).strip("<>")
    for ours in (ack, answer):
        seen = parse_message(ours.as_bytes())  # as the customer's client reads it
        assert seen.in_reply_to == (customer_id,)
        assert customer_id in seen.references
    # The answer also refers to the acknowledgement the customer already has.
    assert str(ack["Message-ID"]).strip("<>") not in parse_message(ack.as_bytes()).references
    assert parse_message(answer.as_bytes()).references[0] == customer_id

    # A reply to the acknowledgement (client keeps only In-Reply-To/References, drops the tag).
    to_ack = make_mail(
        sender=CUSTOMER, subject="Re: pytanie", body="Dziękuję za potwierdzenie.", in_reply_to=ack["Message-ID"]
    )
    await deliver(gateway, settings, to_ack)
    # A reply to the staff answer, sent to its signed Reply-To address.
    reply_address = answer["Reply-To"].addresses[0].addr_spec
    to_answer = make_mail(
        sender=CUSTOMER,
        to=reply_address,
        subject=f"Odp: {answer['Subject']}",
        body="Teraz działa, dziękuję.",
        in_reply_to=answer["Message-ID"],
    )
    await deliver(gateway, settings, to_answer, recipients=[reply_address])

    [only] = all_cases(gateway)
    assert only["number"] == case["number"]
    texts = [m["text"] for m in only["messages"] if m["direction"] == "inbound"]
    assert any("Dziękuję za potwierdzenie." in t for t in texts)
    assert any("Teraz działa, dziękuję." in t for t in texts)


# --- commands --------------------------------------------------------------------------------------


async def test_close_alone_closes_the_case_and_tells_the_customer(gateway, settings):
    case, first, notification = await customer_opens_case(gateway, settings)
    before = len(mail_to(settings, CUSTOMER))
    await staff_sends(gateway, settings, notification, "#close")
    after = case_by_number(gateway, case["number"])
    assert after["status"] == "closed"
    [told] = mail_to(settings, CUSTOMER)[before:]
    assert "zostało zamknięte" in plain(told) and "automatycznie" not in plain(told)
    assert told["Auto-Submitted"] is None  # a staff decision, not an automatic reply
    assert told["In-Reply-To"] == first["Message-ID"]  # not the staff member's message
    [note] = [m for m in after["messages"] if m["direction"] == "note"]
    assert note["text"] == "#close"  # the command is kept, the quoted notification is not


async def test_close_with_an_answer_sends_the_answer_and_closes(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "#close\nProblem rozwiązany, zamykam zgłoszenie.")
    assert _status(gateway, case["number"]) == "closed"
    *_, answer = mail_to(settings, CUSTOMER)
    assert plain(answer).startswith("Problem rozwiązany, zamykam zgłoszenie.")
    assert "#close" not in plain(answer)


async def test_open_reopens_a_closed_case(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "#close")
    assert _status(gateway, case["number"]) == "closed"
    sent_before = len(sent_mail(settings))
    await staff_sends(gateway, settings, notification, "#open")
    assert _status(gateway, case["number"]) == "open"
    assert len(sent_mail(settings)) == sent_before  # reopening tells nobody


async def test_category_is_set_and_several_commands_combine(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "#category Faktury VAT\n#note\nKlient pyta o korektę.")
    after = case_by_number(gateway, case["number"])
    assert after["category"] == "Faktury VAT"
    assert after["status"] == "open"
    assert after["messages"][-1]["direction"] == "note"


async def test_note_is_kept_internal(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    before = len(mail_to(settings, CUSTOMER))
    await staff_sends(gateway, settings, notification, "#note\nKlient dzwonił, oddzwonię jutro.", layout="outlook")
    assert len(mail_to(settings, CUSTOMER)) == before
    after = case_by_number(gateway, case["number"])
    assert after["status"] == "open"
    note = after["messages"][-1]
    assert note["direction"] == "note" and note["source"] == "staff"
    assert "Klient dzwonił, oddzwonię jutro." in note["text"]
    assert "Nowe zgłoszenie" not in note["text"]  # the quoted notification is not kept in the note


# --- who may answer --------------------------------------------------------------------------------


async def test_a_stranger_writing_to_the_staff_address_reaches_no_customer(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    before = len(mail_to(settings, CUSTOMER))
    await staff_sends(
        gateway, settings, notification, "Proszę podać hasło do skrzynki.", sender="Oszust <oszust@evil.example>"
    )
    assert len(mail_to(settings, CUSTOMER)) == before
    original = case_by_number(gateway, case["number"])
    assert original["status"] == "open"
    assert all("hasło" not in m["text"] for m in original["messages"])
    # What the stranger wrote is kept, in a case of its own, and only they hear back.
    stranger_cases = [c for c in all_cases(gateway) if c["requester"] == "oszust@evil.example"]
    assert len(stranger_cases) == 1
    assert all(CUSTOMER not in str(m["To"]) for m in map(parsed, sent_mail(settings)[before + 1 :]))


async def test_a_forged_staff_token_is_no_staff_reply(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    before = len(mail_to(settings, CUSTOMER))
    forged = re.sub(r"-[a-z2-7]{16}@", "-aaaaaaaaaaaaaaaa@", staff_address_of(notification))
    reply = staff_answer(notification, "To nie powinno dojść.")
    reply.replace_header("To", forged)
    await deliver(gateway, settings, reply, recipients=[forged])
    assert len(mail_to(settings, CUSTOMER)) == before
    # Staff mail that is no proper staff reply is kept as an internal note of the case.
    assert case_by_number(gateway, case["number"])["messages"][-1]["direction"] == "note"


# --- auto-close -----------------------------------------------------------------------------------


def _age(gateway: Gateway, number: str, days: float) -> None:
    with transaction(engine_of(gateway)) as session:
        case = session.exec(select(Case).where(Case.number == number)).one()
        case.updated_at = utcnow() - timedelta(days=days)
        session.add(case)


@pytest.mark.parametrize("language", ["pl", "en"])
async def test_auto_close_closes_answered_idle_cases_and_says_so(gateway, settings, language):
    if language == "en":
        await set_english(settings)
    idle, first, idle_notification = await customer_opens_case(gateway, settings, subject="Stara sprawa")
    await staff_sends(gateway, settings, idle_notification, "Gotowe.")
    recent, _, recent_notification = await customer_opens_case(gateway, settings, subject="Świeża sprawa")
    await staff_sends(gateway, settings, recent_notification, "Gotowe.")
    waiting, _, _ = await customer_opens_case(gateway, settings, subject="Czeka na nas")
    _age(gateway, idle["number"], settings.auto_close_days + 1)
    _age(gateway, recent["number"], settings.auto_close_days - 1)
    _age(gateway, waiting["number"], settings.auto_close_days + 30)  # open: waits for staff, never closed
    before = len(mail_to(settings, CUSTOMER))

    components = gateway.components
    assert components is not None
    assert auto_close(components.engine, settings=settings, replies=components.replies) == 1
    await settle(gateway, outbox=True)

    assert _status(gateway, idle["number"]) == "closed"
    assert _status(gateway, recent["number"]) == "answered"
    assert _status(gateway, waiting["number"]) == "open"
    [told] = mail_to(settings, CUSTOMER)[before:]
    assert f"[#{idle['number']}]" in str(told["Subject"])
    expected = "zamknięte automatycznie" if language == "pl" else "closed automatically"
    assert expected in plain(told)
    assert told["Auto-Submitted"] == "auto-replied"
    # Threaded under the answer that went unanswered, in the customer's conversation.
    [answer] = [m for m in case_by_number(gateway, idle["number"])["messages"] if m["source"] == "staff"]
    assert told["In-Reply-To"] == f"<{answer['message_id']}>"
    assert str(first["Message-ID"]) in str(told["References"])
    # Run again: nothing left to close, nothing sent twice.
    assert auto_close(components.engine, settings=settings, replies=components.replies) == 0


async def test_a_closed_case_reopens_when_the_customer_writes(gateway, settings):
    case, _, notification = await customer_opens_case(gateway, settings)
    await staff_sends(gateway, settings, notification, "#close")
    *_, told = mail_to(settings, CUSTOMER)
    await deliver(
        gateway,
        settings,
        make_mail(
            sender=CUSTOMER,
            subject=f"Re: {told['Subject']}",
            body="Jednak jeszcze pytanie.",
            in_reply_to=told["Message-ID"],
        ),
    )
    assert _status(gateway, case["number"]) == "open"
    assert len(all_cases(gateway)) == 1
    with reading(engine_of(gateway)) as session:
        assert session.exec(select(Case).where(Case.number == case["number"])).one().closed_at is None
