"""The reference page /panel in headless Chromium (the one on PATH, driven by playwright; missing is an error).

A person's path through the page: log in with a development token, write a new message with a
dropped file, find it in the list, expand it, see the staff answer arrive marked as answered,
mark it read, reply, and be refused a 16 MB file before anything is uploaded. Screenshots of the
list and the form are saved to tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page

from gateway.app import Gateway
from gateway.settings import Settings
from tests.helpers import case_by_number, send, settle
from tests.servers.chromium import browser_page
from tests.test_panel_api import (
    ACCOUNT_A,
    _html_mail,
    admin,
    put_directory,
    staff_reply,
    token,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

# Simulates what the browser does when a file is dragged from the desktop onto an element.
DROP_FILE = """([selector, name, type, size, text]) => {
    const content = text !== null ? [text] : [new Uint8Array(size)];
    const transfer = new DataTransfer();
    transfer.items.add(new File(content, name, { type }));
    const zone = document.querySelector(selector);
    for (const kind of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: transfer }));
    }
}"""


@pytest.fixture
async def base_url(gateway: Gateway, settings: Settings) -> str:
    url = f"http://127.0.0.1:{settings.http_port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await put_directory(client, settings)
    return url


@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Page]:
    async with browser_page() as tab:
        yield tab


def _expect(locator):  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    return expect(locator)


def _screenshot(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


async def _log_in_by_pasting(page, base_url: str, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{base_url}/panel")
    await _expect(page.get_by_role("heading", name="Logowanie deweloperskie")).to_be_visible()
    await page.get_by_label("Token").fill(token(settings))
    await page.get_by_role("button", name="Zaloguj").click()
    await _expect(page.locator("#who-account")).to_have_text(ACCOUNT_A["name"])


async def _open_new_message_form(page) -> None:  # type: ignore[no-untyped-def]
    await page.get_by_role("button", name="Nowa wiadomość").click()
    await _expect(page.locator("#new-message")).to_be_visible()


async def test_a_customer_writes_sees_the_answer_and_marks_it_read(page, base_url, settings, gateway):
    await _log_in_by_pasting(page, base_url, settings)
    await _open_new_message_form(page)
    form = page.locator("#new-message")
    await form.get_by_label("Kategoria").select_option(label="Hosting i strony WWW")
    await form.get_by_label("Usługa").select_option(label="Poczta firmowa")
    await form.get_by_label("Nadawca").select_option("technical")
    await form.get_by_label("Temat").fill("Nie działa formularz kontaktowy")
    await form.get_by_label("Treść").fill("Dzień dobry,\nformularz na stronie zwraca błąd 500.")
    await page.evaluate(
        DROP_FILE, ["#new-message [data-dropzone]", "błąd.pdf", "application/pdf", 0, "%PDF-1.4 upuszczony plik"]
    )
    await _expect(form.locator("[data-file-list] li")).to_contain_text("błąd.pdf")
    await page.screenshot(path=_screenshot("panel-form.png"), full_page=True)

    await form.get_by_role("button", name="Wyślij").click()
    notice = page.locator("#notice")
    await _expect(notice).to_contain_text("Numer sprawy:")
    number = re.search(r"\d{4}-\d{6}", await notice.inner_text()).group(0)  # type: ignore[union-attr]
    row = page.locator(f'tr[data-number="{number}"]')
    await _expect(row).to_contain_text("Nie działa formularz kontaktowy")
    await _expect(row).to_contain_text("Tomasz Technik")
    await _expect(row).to_contain_text("Poczta firmowa")
    await _expect(row.locator(".answered-cell")).to_have_text("Oczekuje")

    stored = case_by_number(gateway, number)
    assert stored["requester"] == "tech@firma-a.example" and stored["service"] == "a-mail"
    assert stored["category"] == "hosting"
    [attachment] = stored["messages"][0]["attachments"]
    assert attachment["filename"] == "błąd.pdf" and attachment["size"] == len("%PDF-1.4 upuszczony plik")

    await row.get_by_role("button", name=f"Rozwiń sprawę {number}").click()
    thread = page.locator(f'tr[data-thread="{number}"]')
    await _expect(thread).to_contain_text("formularz na stronie zwraca błąd 500.")
    await _expect(thread.get_by_role("link", name="błąd.pdf")).to_be_visible()

    await staff_reply(gateway, settings, number, "Dzień dobry, poprawiliśmy konfigurację PHP.")
    await page.get_by_role("button", name="Odśwież").click()
    await _expect(row.locator(".answered-cell")).to_have_text("✔ Odpowiedziano")
    await _expect(row.locator(".unread-cell")).to_have_text("1")
    await _expect(thread).to_contain_text("poprawiliśmy konfigurację PHP")  # the open thread stays open
    await _expect(thread).to_contain_text("Odpowiedź Biura Obsługi")
    await page.screenshot(path=_screenshot("panel-list.png"), full_page=True)

    await thread.get_by_role("button", name="Oznacz jako przeczytane").click()
    await _expect(row.locator(".unread-cell")).to_have_text("0")
    async with httpx.AsyncClient(base_url=base_url) as client:
        listed = (await client.get("/api/panel/cases", headers=admin(settings))).json()
    assert listed["items"][0]["unread"] == 0 and listed["items"][0]["answered"] is True


async def test_a_reply_from_the_thread_with_a_picked_file(page, base_url, settings, gateway):
    await page.goto(f"{base_url}/panel?token={token(settings)}")
    await _expect(page.locator("#who-account")).to_have_text(ACCOUNT_A["name"])
    assert "token=" not in page.url  # the token leaves the address bar at once
    await _open_new_message_form(page)
    form = page.locator("#new-message")
    await form.get_by_label("Kategoria").select_option("email")
    await form.get_by_label("Usługa").select_option("a-www")
    await form.get_by_label("Temat").fill("Pytanie o skrzynkę")
    await form.get_by_label("Treść").fill("Jak zwiększyć limit skrzynki?")
    await form.get_by_role("button", name="Wyślij").click()
    await _expect(page.locator("#notice")).to_contain_text("Numer sprawy:")
    row = page.locator("tr.case").first
    number = await row.get_attribute("data-number")
    await row.locator("button.expand").click()
    thread = page.locator(f'tr[data-thread="{number}"]')
    reply = thread.locator("form.reply")
    await reply.get_by_label("Treść odpowiedzi").fill("Dodaję logi.")
    await reply.locator("[data-file-picker]").set_input_files(
        files=[{"name": "logi.txt", "mimeType": "text/plain", "buffer": b"log line"}]
    )
    await _expect(reply.locator("[data-file-list] li")).to_contain_text("logi.txt")
    await reply.get_by_role("button", name="Wyślij odpowiedź").click()
    await _expect(page.locator("#notice")).to_contain_text(f"Odpowiedź w sprawie {number} wysłana")
    await _expect(thread).to_contain_text("Dodaję logi.")
    case = case_by_number(gateway, str(number))
    assert case["messages"][-1]["attachments"][0]["filename"] == "logi.txt"
    assert case["messages"][-1]["source"] == "panel"


async def test_a_16_mb_file_is_refused_before_anything_is_uploaded(page, base_url, settings, tmp_path):
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    await _log_in_by_pasting(page, base_url, settings)
    await _open_new_message_form(page)
    form = page.locator("#new-message")
    error = form.locator("[data-file-error]")

    await page.evaluate(DROP_FILE, ["#new-message [data-dropzone]", "film.mp4", "video/mp4", 16 * 1024 * 1024, None])
    await _expect(error).to_be_visible()
    await _expect(error).to_contain_text("„film.mp4”")
    await _expect(error).to_contain_text("przekracza limit 15 MB")
    await _expect(form.locator("[data-file-list] li")).to_have_count(0)

    big = tmp_path / "obraz.iso"
    with big.open("wb") as handle:
        handle.truncate(16 * 1024 * 1024)  # a local path: the browser reads it, nothing is piped through
    await form.locator("[data-file-picker]").set_input_files(big)
    await _expect(error).to_contain_text("„obraz.iso”")
    await _expect(form.locator("[data-file-list] li")).to_have_count(0)
    await page.screenshot(path=_screenshot("panel-refused.png"), full_page=True)
    assert posts == []  # nothing went to the server

    # the form itself still works, without the refused files
    await form.get_by_label("Kategoria").select_option("general")
    await form.get_by_label("Usługa").select_option("a-www")
    await form.get_by_label("Temat").fill("Bez załączników")
    await form.get_by_label("Treść").fill("Plik był za duży.")
    await form.get_by_role("button", name="Wyślij").click()
    await _expect(page.locator("#notice")).to_contain_text("Numer sprawy:")
    assert [url for url in posts if url.endswith("/api/panel/messages")] == [f"{base_url}/api/panel/messages"]


async def test_required_fields_are_asked_for_and_a_bad_token_is_refused(page, base_url, settings):
    await page.goto(f"{base_url}/panel?token=nieprawidlowy")
    await _expect(page.locator("#login-error")).to_contain_text("nieprawidłowy albo wygasł")
    await page.get_by_label("Token").fill(token(settings))
    await page.get_by_role("button", name="Zaloguj").click()
    await _open_new_message_form(page)
    await page.locator("#new-message").get_by_role("button", name="Wyślij").click()
    await _expect(page.locator("#new-message [data-form-error]")).to_have_text(
        "Uzupełnij wymagane pola: kategoria, usługa, temat, treść."
    )


async def test_mail_html_is_shown_without_scripts_or_remote_loads(page, base_url, settings, gateway):
    remote: list[str] = []
    page.on("request", lambda request: remote.append(request.url) if "tracker.example" in request.url else None)
    await send(settings, _html_mail("anna@firma-a.example"))
    await settle(gateway)
    await _log_in_by_pasting(page, base_url, settings)
    row = page.locator("tr.case").first
    await row.locator("button.expand").click()
    frame_element = page.locator("iframe.mail-html").first
    await _expect(frame_element).to_be_visible()
    assert "allow-scripts" not in (await frame_element.get_attribute("sandbox") or "")
    frame = page.frame_locator("iframe.mail-html").first
    await _expect(frame.locator("b")).to_have_text("tutaj")
    inline = frame.locator("img[alt=zrzut]")
    await _expect(inline).to_have_attribute("src", re.compile(r"^/api/panel/attachments/\d+\?sig="))
    assert await frame.locator("script").count() == 0
    assert remote == []
