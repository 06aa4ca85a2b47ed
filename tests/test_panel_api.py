"""The customer panel's API over real HTTP (SPEC §8): directory, form, list, thread, scoping, tokens.

Every test talks to the gateway's own uvicorn with httpx and checks what the pipeline did through
the database and the maildir relay, exactly as for SMTP mail. The helpers at the top are shared
with the browser and fuzz tests.
"""

from __future__ import annotations

import email
import time
from collections.abc import AsyncIterator
from email import policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, text
from sqlmodel import select

from gateway.app import Gateway
from gateway.panel.auth import issue_token
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Attachment, Case, JournalEntry, Message, utcnow
from tests.helpers import (
    STAFF,
    STAFF_QUEUE,
    SUPPORT,
    authenticated,
    case_by_number,
    make_mail,
    parsed_sent,
    send,
    settle,
)

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # conftest's short secret

LIMIT = 15 * 1024 * 1024
ADMIN_A = "szef@firma-a.example"
STANDARD_A = "www@firma-a.example"
ACCOUNT_A: dict[str, Any] = {
    "name": "Firma A sp. z o.o.",
    "language": "pl",
    "services": [{"id": "a-www", "name": "Hosting WWW"}, {"id": "a-mail", "name": "Poczta firmowa"}],
    "contacts": [
        {"kind": "representative", "name": "Anna Nowak", "email": "anna@firma-a.example"},
        {"kind": "technical", "name": "Tomasz Technik", "email": "tech@firma-a.example"},
        {"kind": "billing", "name": "Barbara Faktury", "email": "faktury@firma-a.example"},
    ],
}
ACCOUNT_B: dict[str, Any] = {
    "name": "Firma B",
    "services": [{"id": "b-www", "name": "Hosting B"}],
    "contacts": [{"kind": "representative", "name": "Bogdan", "email": "bogdan@firma-b.example"}],
}


# --- helpers shared by the panel tests ------------------------------------------------------------


def token(
    settings: Settings,
    *,
    account: str = "A",
    role: str = "admin",
    service: str | None = None,
    sub: str = ADMIN_A,
    hours: float = 1.0,
    secret: str | None = None,
) -> str:
    return issue_token(
        secret=secret or settings.panel_secret, sub=sub, account=account, role=role, service=service, hours=hours
    )


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def admin(settings: Settings, account: str = "A") -> dict[str, str]:
    return bearer(token(settings, account=account, sub=ADMIN_A if account == "A" else "szef@firma-b.example"))


def standard(settings: Settings, service: str = "a-www") -> dict[str, str]:
    return bearer(token(settings, role="standard", service=service, sub=STANDARD_A))


async def put_directory(client: httpx.AsyncClient, settings: Settings) -> None:
    system = bearer(token(settings, account="panel", role="system", sub="panel@hosting.example"))
    for account, body in (("A", ACCOUNT_A), ("B", ACCOUNT_B)):
        response = await client.put(f"/api/accounts/{account}", json=body, headers=system)
        assert response.status_code == 200, response.text


async def new_message(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    service: str = "a-www",
    subject: str = "Nie działa strona",
    body: str = "Strona zwraca błąd 500.",
    sender: str | None = None,
    files: list[tuple[str, bytes, str]] | None = None,
    category: str = "hosting",
) -> httpx.Response:
    data = {"category": category, "service": service, "subject": subject, "body": body}
    if sender:
        data["sender"] = sender
    uploads = [("files", (name, content, kind)) for name, content, kind in files or []]
    return await client.post("/api/panel/messages", data=data, files=uploads or None, headers=headers)


async def staff_reply(gateway: Gateway, settings: Settings, number: str, body: str) -> None:
    """A staff member answers from a mail client, to the signed staff reply address, over SMTP."""
    assert gateway.components is not None
    address = gateway.components.addresses.for_staff(number=number)
    # Staff replies count only when the sender is authenticated (issue 12): DMARC pass, as the trusted relay says.
    mail = authenticated(make_mail(sender=STAFF, to=address, subject=f"Re: [#{number}] odpowiedź", body=body))
    assert (await send(settings, mail, recipients=[address]))[0] == 250
    await settle(gateway)


def journal_count(gateway: Gateway) -> int:
    assert gateway.components is not None
    with reading(gateway.components.journal_engine) as session:
        return session.exec(select(func.count()).select_from(JournalEntry)).one()


@pytest.fixture
async def client(gateway: Gateway, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as http:
        await put_directory(http, settings)
        yield http


async def _case(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> str:
    response = await new_message(client, headers, **fields)
    assert response.status_code == 201, response.text
    return response.json()["number"]


async def _list(client: httpx.AsyncClient, headers: dict[str, str], page: int = 1) -> dict[str, Any]:
    response = await client.get(f"/api/panel/cases?page={page}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _item(client: httpx.AsyncClient, headers: dict[str, str], number: str) -> dict[str, Any]:
    [item] = [i for i in (await _list(client, headers))["items"] if i["number"] == number]
    return item


# --- the directory --------------------------------------------------------------------------------


async def test_directory_is_written_with_a_system_token_only(client, settings):
    body = {"name": "Firma C", "services": [], "contacts": []}
    for headers in ({}, admin(settings), standard(settings)):
        assert (await client.put("/api/accounts/C", json=body, headers=headers)).status_code == 401
    system = bearer(token(settings, account="panel", role="system"))
    response = await client.put("/api/accounts/C", json=body, headers=system)
    assert response.status_code == 200 and response.json()["name"] == "Firma C"


async def test_directory_put_replaces_services_and_contacts(client, settings, gateway):
    system = bearer(token(settings, account="panel", role="system"))
    replaced = {
        **ACCOUNT_A,
        "services": [{"id": "a-www", "name": "Nowa nazwa"}],
        "contacts": [{"kind": "technical", "name": "Nowy Technik", "email": "Nowy@Firma-A.example"}],
    }
    response = await client.put("/api/accounts/A", json=replaced, headers=system)
    assert response.status_code == 200
    me = (await client.get("/api/panel/me", headers=admin(settings))).json()
    assert me["services"] == [{"id": "a-www", "name": "Nowa nazwa"}]
    assert me["contacts"] == [{"kind": "technical", "name": "Nowy Technik", "email": "nowy@firma-a.example"}]


async def test_directory_refuses_bad_input(client, settings):
    system = bearer(token(settings, account="panel", role="system"))
    taken = {"name": "Firma C", "services": [{"id": "b-www", "name": "cudza"}]}
    assert (await client.put("/api/accounts/C", json=taken, headers=system)).status_code == 409
    twice = {"name": "Firma C", "services": [{"id": "x", "name": "1"}, {"id": "x", "name": "2"}]}
    assert (await client.put("/api/accounts/C", json=twice, headers=system)).status_code == 422
    kind = {"name": "Firma C", "contacts": [{"kind": "boss", "name": "x", "email": "x@c.example"}]}
    assert (await client.put("/api/accounts/C", json=kind, headers=system)).status_code == 422
    address = {"name": "Firma C", "contacts": [{"kind": "billing", "name": "x", "email": "nie-adres"}]}
    assert (await client.put("/api/accounts/C", json=address, headers=system)).status_code == 422


async def test_mail_from_a_contact_is_linked_to_the_account(client, settings, gateway):
    await send(settings, make_mail(sender="faktury@firma-a.example", subject="Faktura"))
    await settle(gateway)
    listed = await _list(client, admin(settings))
    assert [item["subject"] for item in listed["items"]] == ["Faktura"]
    assert listed["items"][0]["service"] is None
    # a standard login sees its service only, and mail names none
    assert (await _list(client, standard(settings)))["total"] == 0
    assert (await _list(client, admin(settings, "B")))["total"] == 0


# --- the form as a mail producer ------------------------------------------------------------------


async def test_form_message_enters_the_pipeline_like_smtp_mail(client, settings, gateway):
    pdf = b"%PDF-1.4 zrzut ekranu"
    response = await new_message(
        client,
        admin(settings),
        sender="technical",
        subject="Błąd 500 na stronie",
        files=[("zrzut ekranu.pdf", pdf, "application/pdf")],
    )
    assert response.status_code == 201, response.text
    number = response.json()["number"]

    case = case_by_number(gateway, number)
    assert case["account"] == "A" and case["service"] == "a-www" and case["category"] == "hosting"
    assert case["requester"] == "tech@firma-a.example" and case["subject"] == "Błąd 500 na stronie"
    inbound = case["messages"][0]
    assert inbound["direction"] == "inbound" and inbound["source"] == "panel"
    assert inbound["from"] == "Tomasz Technik <tech@firma-a.example>" and SUPPORT in inbound["to"]
    assert [(a["filename"], a["size"]) for a in inbound["attachments"]] == [("zrzut ekranu.pdf", len(pdf))]

    assert gateway.components is not None
    with reading(gateway.components.journal_engine) as session:
        [entry] = session.exec(select(JournalEntry)).all()
    assert entry.source == "panel" and entry.status == "done"
    assert entry.meta["panel"] == {
        "account": "A",
        "service": "a-www",
        "category": "hosting",
        "case": None,
        "login": ADMIN_A,
    }
    raw = email.message_from_bytes(entry.raw, policy=policy.default)
    assert raw["Subject"] == "Błąd 500 na stronie" and raw["Message-ID"] and raw["Date"]

    await settle(gateway, outbox=True)
    sent = parsed_sent(settings)
    [ack] = [m for m in sent if "tech@firma-a.example" in str(m["To"])]
    assert f"[#{number}]" in ack["Subject"] and ack["Auto-Submitted"] == "auto-replied"
    [notification] = [m for m in sent if STAFF_QUEUE in str(m["To"])]
    assert f"[#{number}]" in notification["Subject"]
    assert [part.get_filename() for part in notification.iter_attachments()] == ["zrzut ekranu.pdf"]


async def test_without_a_sender_the_mail_is_from_the_login(client, settings, gateway):
    number = await _case(client, standard(settings))
    case = case_by_number(gateway, number)
    assert case["requester"] == STANDARD_A and case["service"] == "a-www"


async def test_a_panel_reply_threads_into_its_case(client, settings, gateway):
    number = await _case(client, admin(settings), sender="representative")
    response = await client.post(
        f"/api/panel/cases/{number}/replies",
        data={"body": "Jeszcze jedno."},
        files=[("files", ("log.txt", b"error log", "text/plain"))],
        headers=admin(settings),
    )
    assert response.status_code == 201 and response.json()["number"] == number
    case = case_by_number(gateway, number)
    assert [m["direction"] for m in case["messages"]] == ["inbound", "outbound", "inbound"]
    reply = case["messages"][2]
    assert reply["source"] == "panel" and "Jeszcze jedno." in reply["text"]
    assert f"[#{number}]" in reply["subject"] and reply["attachments"][0]["filename"] == "log.txt"
    await settle(gateway, outbox=True)
    notifications = [m for m in parsed_sent(settings) if STAFF_QUEUE in str(m["To"])]
    assert len(notifications) == 2  # staff hear of the reply like of any customer mail


async def test_missing_fields_are_named_and_nothing_is_stored(client, settings, gateway):
    response = await client.post(
        "/api/panel/messages", data={"service": "a-www", "subject": "  "}, headers=admin(settings)
    )
    assert response.status_code == 422
    missing = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert missing == {("body", "category"), ("body", "subject"), ("body", "body")}
    empty = await client.post("/api/panel/messages", files={"files": ("a.txt", b"x")}, headers=admin(settings))
    assert empty.status_code == 422 and len(empty.json()["detail"]) == 4
    number = await _case(client, admin(settings))
    before = journal_count(gateway)
    reply = await client.post(f"/api/panel/cases/{number}/replies", data={"body": ""}, headers=admin(settings))
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "body"]
    bad_sender = await new_message(client, admin(settings), sender="ceo")
    assert bad_sender.status_code == 422
    assert journal_count(gateway) == before


async def test_a_file_over_the_limit_refuses_the_whole_form_and_stores_nothing(client, settings, gateway):
    files = [("ok.txt", b"small", "text/plain"), ("za-duzy.iso", b"\0" * (LIMIT + 1), "application/octet-stream")]
    response = await new_message(client, admin(settings), files=files)
    assert response.status_code == 413
    problem = response.json()
    assert problem["filename"] == "za-duzy.iso" and problem["limit"] == LIMIT and problem["size"] == LIMIT + 1
    assert "za-duzy.iso" in problem["detail"] and str(LIMIT) in problem["detail"]
    assert journal_count(gateway) == 0
    assert not [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert (await _list(client, admin(settings)))["total"] == 0


async def test_a_file_of_exactly_the_limit_is_accepted(client, settings, gateway):
    number = await _case(client, admin(settings), files=[("granica.bin", b"a" * LIMIT, "application/octet-stream")])
    [attachment] = case_by_number(gateway, number)["messages"][0]["attachments"]
    assert attachment["size"] == LIMIT and not attachment["refused"]


async def test_a_reply_with_a_file_over_the_limit_stores_nothing(client, settings, gateway):
    number = await _case(client, admin(settings))
    before = journal_count(gateway)
    response = await client.post(
        f"/api/panel/cases/{number}/replies",
        data={"body": "plik"},
        headers=admin(settings),
        files=[("files", ("duzy.bin", b"x" * (LIMIT + 1), "application/octet-stream"))],
    )
    assert response.status_code == 413 and response.json()["filename"] == "duzy.bin"
    assert journal_count(gateway) == before


# --- scoping --------------------------------------------------------------------------------------


async def test_an_admin_sees_every_service_of_its_account_and_nothing_else(client, settings):
    www = await _case(client, admin(settings), service="a-www")
    mail = await _case(client, admin(settings), service="a-mail", subject="Poczta")
    b_case = await _case(client, admin(settings, "B"), service="b-www", subject="Inne konto")
    assert {i["number"] for i in (await _list(client, admin(settings)))["items"]} == {www, mail}
    assert {i["number"] for i in (await _list(client, admin(settings, "B")))["items"]} == {b_case}


async def test_a_standard_login_sees_only_its_service(client, settings, gateway):
    www = await _case(client, admin(settings), service="a-www")
    mail = await _case(client, admin(settings), service="a-mail", files=[("hasla.txt", b"tajne", "text/plain")])
    login = standard(settings, "a-www")
    assert [i["number"] for i in (await _list(client, login))["items"]] == [www]
    assert (await client.get(f"/api/panel/cases/{www}", headers=login)).status_code == 200
    attachment_id = case_by_number(gateway, mail)["messages"][0]["attachments"][0]["id"]
    before = journal_count(gateway)
    outside = [
        await client.get(f"/api/panel/cases/{mail}", headers=login),
        await client.post(f"/api/panel/cases/{mail}/replies", data={"body": "x"}, headers=login),
        await client.post(f"/api/panel/cases/{mail}/read", headers=login),
        await client.get(f"/api/panel/attachments/{attachment_id}", headers=login),
        await new_message(client, login, service="a-mail"),
    ]
    assert [r.status_code for r in outside] == [404] * 5
    assert journal_count(gateway) == before
    me = (await client.get("/api/panel/me", headers=login)).json()
    assert me["services"] == [{"id": "a-www", "name": "Hosting WWW"}]


async def test_another_accounts_case_is_not_found(client, settings, gateway):
    number = await _case(client, admin(settings), files=[("umowa.pdf", b"%PDF umowa", "application/pdf")])
    attachment_id = case_by_number(gateway, number)["messages"][0]["attachments"][0]["id"]
    other = admin(settings, "B")
    before = journal_count(gateway)
    outside = [
        await client.get(f"/api/panel/cases/{number}", headers=other),
        await client.post(f"/api/panel/cases/{number}/replies", data={"body": "x"}, headers=other),
        await client.post(f"/api/panel/cases/{number}/read", headers=other),
        await client.get(f"/api/panel/attachments/{attachment_id}", headers=other),
        await new_message(client, other, service="a-www"),
    ]
    assert [r.status_code for r in outside] == [404] * 5
    assert journal_count(gateway) == before
    # "outside your scope" and "does not exist" are indistinguishable
    missing = await client.get("/api/panel/cases/2099-999999", headers=other)
    assert missing.status_code == 404 and missing.json() == outside[0].json()


async def test_internal_notes_and_their_attachments_are_never_shown(client, settings, gateway):
    number = await _case(client, admin(settings))
    assert gateway.components is not None
    address = gateway.components.addresses.for_staff(number=number)
    note = authenticated(
        make_mail(
            sender=STAFF,
            to=address,
            subject=f"[#{number}]",
            body="#note\nKlient jest trudny.",
            attachments=[("notatka.txt", b"wewnetrzne")],
        )
    )
    await send(settings, note, recipients=[address])
    await settle(gateway)
    case = case_by_number(gateway, number)
    [stored_note] = [m for m in case["messages"] if m["direction"] == "note"]
    thread = (await client.get(f"/api/panel/cases/{number}", headers=admin(settings))).json()
    assert "note" not in {m["direction"] for m in thread["messages"]}
    assert all("trudny" not in m["text"] for m in thread["messages"])
    note_attachment = stored_note["attachments"][0]["id"]
    response = await client.get(f"/api/panel/attachments/{note_attachment}", headers=admin(settings))
    assert response.status_code == 404


# --- tokens ---------------------------------------------------------------------------------------


def _bad_tokens(settings: Settings) -> dict[str, dict[str, str]]:
    good = token(settings)
    header, payload, signature = good.split(".")
    return {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "garbage": bearer("not-a-jwt"),
        "expired": bearer(token(settings, hours=-1)),
        "wrong secret": bearer(token(settings, secret="someone-elses-secret-of-enough-length")),
        "tampered": bearer(f"{header}.{payload}x.{signature}"),
        "standard without service": bearer(
            issue_token(secret=settings.panel_secret, sub="x@y", account="A", role="standard")
        ),
        "system is not a login": bearer(token(settings, role="system")),
    }


async def test_bad_tokens_get_401_everywhere(client, settings, gateway):
    number = await _case(client, admin(settings), files=[("a.txt", b"tresc", "text/plain")])
    attachment_id = case_by_number(gateway, number)["messages"][0]["attachments"][0]["id"]
    before = journal_count(gateway)
    calls = [
        ("GET", "/api/panel/me", {}),
        ("GET", "/api/panel/cases", {}),
        ("GET", f"/api/panel/cases/{number}", {}),
        ("POST", f"/api/panel/cases/{number}/read", {}),
        ("POST", f"/api/panel/cases/{number}/replies", {"data": {"body": "x"}}),
        ("POST", "/api/panel/messages", {"data": {"category": "c", "service": "a-www", "subject": "s", "body": "b"}}),
        ("GET", f"/api/panel/attachments/{attachment_id}", {}),
    ]
    for name, headers in _bad_tokens(settings).items():
        for method, path, extra in calls:
            response = await client.request(method, path, headers=headers, **extra)
            assert response.status_code == 401, (name, method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
            assert number not in response.text
    assert journal_count(gateway) == before


async def test_download_links_are_signed_per_attachment(client, settings, gateway):
    number = await _case(
        client, admin(settings), files=[("a.txt", b"pierwszy", "text/plain"), ("b.txt", b"drugi", "text/plain")]
    )
    thread = (await client.get(f"/api/panel/cases/{number}", headers=admin(settings))).json()
    first, second = thread["messages"][0]["attachments"]
    assert (await client.get(first["download_url"])).content == b"pierwszy"  # no token needed
    signature = first["download_url"].split("sig=")[1]
    assert (await client.get(f"/api/panel/attachments/{second['id']}?sig={signature}")).status_code == 401
    expires, mac = signature.split(".")
    forged = f"{int(expires) + 3600}.{mac}"
    assert (await client.get(f"/api/panel/attachments/{first['id']}?sig={forged}")).status_code == 401
    expired = f"{int(time.time()) - 10}.{mac}"
    assert (await client.get(f"/api/panel/attachments/{first['id']}?sig={expired}")).status_code == 401
    scoped = await client.get(f"/api/panel/attachments/{second['id']}", headers=admin(settings))
    assert scoped.content == b"drugi"
    assert scoped.headers["x-content-type-options"] == "nosniff"
    assert scoped.headers["content-disposition"].startswith("attachment;")


# --- answered and unread as mail comes and goes ---------------------------------------------------


async def test_answered_and_unread_follow_the_conversation(client, settings, gateway):
    login = admin(settings)
    number = await _case(client, login)
    await settle(gateway, outbox=True)
    item = await _item(client, login, number)
    # the automatic acknowledgement is not an answer, and not an unread one
    assert (item["answered"], item["unread"]) == (False, 0)

    await staff_reply(gateway, settings, number, "Dzień dobry, naprawiliśmy stronę.")
    item = await _item(client, login, number)
    assert (item["answered"], item["unread"]) == (True, 1)
    thread = (await client.get(f"/api/panel/cases/{number}", headers=login)).json()
    answer = thread["messages"][-1]
    assert answer["direction"] == "outbound" and "naprawiliśmy" in answer["text"] and answer["read"] is False

    await staff_reply(gateway, settings, number, "I jeszcze jedno: proszę wyczyścić cache.")
    assert (await _item(client, login, number))["unread"] == 2

    # the customer writes again: no longer answered; the answers are still unread
    response = await client.post(
        f"/api/panel/cases/{number}/replies", data={"body": "Nadal nie działa."}, headers=login
    )
    assert response.status_code == 201
    item = await _item(client, login, number)
    assert (item["answered"], item["unread"]) == (False, 2)

    marked = await client.post(f"/api/panel/cases/{number}/read", headers=login)
    assert marked.status_code == 200 and marked.json()["marked"] >= 2
    assert (await _item(client, login, number))["unread"] == 0

    await staff_reply(gateway, settings, number, "Teraz na pewno działa.")
    item = await _item(client, login, number)
    assert (item["answered"], item["unread"]) == (True, 1)
    listed = await _list(client, login)
    assert listed["items"][0]["number"] == number  # the newest update is first


async def test_a_customer_reply_by_mail_moves_the_case_back_to_open(client, settings, gateway):
    login = admin(settings)
    number = await _case(client, login, sender="billing")
    await staff_reply(gateway, settings, number, "Faktura jest w załączniku.")
    assert (await _item(client, login, number))["answered"] is True
    mail = make_mail(sender="faktury@firma-a.example", subject=f"Re: [#{number}] dziękuję", body="Dziękuję!")
    await send(settings, mail)
    await settle(gateway)
    assert (await _item(client, login, number))["answered"] is False


# --- the thread's HTML ----------------------------------------------------------------------------


def _html_mail(sender: str) -> EmailMessage:
    message = make_mail(sender=sender, subject="Zrzut ekranu", body="Wersja tekstowa.")
    html = (
        '<p onclick="steal()">Patrz <b>tutaj</b>:</p><script>alert(1)</script>'
        '<img src="cid:zrzut@klient" alt="zrzut"><img src="https://tracker.example/pixel.gif">'
        '<a href="javascript:alert(2)">klik</a><a href="https://firma-a.example/">strona</a>'
        '<div style="color: red; background: url(https://tracker.example/bg.png)">kolor</div>'
    )
    message.add_alternative(html, subtype="html")
    message.get_payload()[1].add_related(b"\x89PNG fake image", maintype="image", subtype="png", cid="<zrzut@klient>")
    return message


async def test_html_bodies_are_sanitised_and_inline_images_served(client, settings, gateway):
    await send(settings, _html_mail("anna@firma-a.example"))
    await settle(gateway)
    [item] = (await _list(client, admin(settings)))["items"]
    thread = (await client.get(f"/api/panel/cases/{item['number']}", headers=admin(settings))).json()
    message = thread["messages"][0]
    html = message["html"]
    assert "Wersja tekstowa." in message["text"]  # the text part is always there
    assert "<script" not in html and "alert" not in html and "onclick" not in html
    assert "tracker.example" not in html and "javascript:" not in html
    assert 'href="https://firma-a.example/"' in html and "color:red" in html.replace(" ", "")
    [image] = [a for a in message["attachments"] if a["inline"]]
    assert f'src="{image["download_url"]}"'.replace("&", "&amp;") in html
    served = await client.get(image["download_url"])
    assert served.status_code == 200 and served.content == b"\x89PNG fake image"
    assert served.headers["content-type"] == "image/png"


# --- the list: order, pages, and its cost with many cases ------------------------------------------


def _bulk_cases(gateway: Gateway, *, account: str, count: int, service: str = "a-www") -> None:
    """Many cases straight into the table, spread over time, without going through mail."""
    assert gateway.components is not None
    now = utcnow()
    rows = [
        {
            "number": f"2000-{i:06d}",
            "subject": f"Sprawa {i}",
            "status": "open",
            "requester": "x@firma-a.example",
            "requester_name": "",
            "language": "pl",
            "account_id": account,
            "service_id": service,
            "created_at": now,
            "updated_at": now.replace(year=2000) if i % 2 else now.replace(year=2001),
            "message_count": 0,
        }
        for i in range(count)
    ]
    with transaction(gateway.components.engine) as session:
        session.execute(Case.__table__.insert(), rows)  # type: ignore[attr-defined]


async def test_the_list_is_newest_first_and_paginated(client, settings, gateway):
    _bulk_cases(gateway, account="A", count=60)
    newest = await _case(client, admin(settings))
    first = await _list(client, admin(settings))
    assert first["total"] == 61 and first["page"] == 1 and len(first["items"]) == 25
    assert first["items"][0]["number"] == newest
    updated = [item["updated_at"] for item in first["items"]]
    assert updated == sorted(updated, reverse=True)
    third = await _list(client, admin(settings), page=3)
    assert len(third["items"]) == 11
    seen = {i["number"] for p in (1, 2, 3) for i in (await _list(client, admin(settings), page=p))["items"]}
    assert len(seen) == 61
    assert (await _list(client, admin(settings), page=9))["items"] == []
    assert (await client.get("/api/panel/cases?page=0", headers=admin(settings))).status_code == 422


async def test_the_list_stays_fast_with_a_hundred_thousand_cases(client, settings, gateway):
    _bulk_cases(gateway, account="A", count=100_000)
    # How fast is bench/panel_list.py's question; here: right answer, and the plan uses the index.
    page = await _list(client, admin(settings), page=2)
    assert page["total"] == 100_000 and len(page["items"]) == 25
    assert gateway.components is not None
    if gateway.components.engine.dialect.name == "sqlite":
        with gateway.components.engine.connect() as connection:
            plan = connection.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT * FROM support_case WHERE account_id = 'A' "
                    "ORDER BY updated_at DESC, id DESC LIMIT 25 OFFSET 25"
                )
            ).all()
        assert "ix_case_account_updated" in " ".join(str(row) for row in plan)


async def test_counts_of_unread_answers_are_per_case(client, settings, gateway):
    login = admin(settings)
    first = await _case(client, login, subject="pierwsza")
    second = await _case(client, login, subject="druga")
    await staff_reply(gateway, settings, first, "Odpowiedź na pierwszą.")
    items = {i["number"]: i for i in (await _list(client, login))["items"]}
    assert (items[first]["unread"], items[second]["unread"]) == (1, 0)
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        outbound = session.exec(select(Message).where(Message.direction == "outbound")).all()
        assert all(m.read_at is None for m in outbound)
        assert session.exec(select(func.count()).select_from(Attachment)).one() == 0
