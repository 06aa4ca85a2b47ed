"""`/status` for operators and the mailbox states in `/healthz` (SPEC §14, issue 15 item 5).

A real gateway with real traffic: mail over SMTP, one message from the panel, one fetched from a
real Dovecot, an outgoing message the relay refuses for good, and a second mailbox whose login
is refused. The page is opened in headless Chromium the way an operator would (`?token=` once,
then the cookie), checked for what it must show, and saved as tests/artifacts/status.png.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from email.policy import SMTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from gateway.app import Gateway
from gateway.settings import Settings
from tests.helpers import make_mail, send, settle
from tests.servers.chromium import browser_page
from tests.servers.dovecot import DovecotServer, make_dovecot_fixture
from tests.servers.relay_sink import RelaySink
from tests.test_panel_api import bearer, new_message, put_directory, token

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

dovecot = make_dovecot_fixture()
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STATUS_TOKEN = "operator-status-token"
UNREACHABLE = "nieistnieje@klient.example"  # the relay refuses this recipient for good


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as running:
        running.fail("550 5.1.1 no such mailbox", recipient=UNREACHABLE, stage="rcpt")
        yield running


@pytest.fixture
async def traffic(settings_factory, dovecot: DovecotServer, sink: RelaySink) -> AsyncIterator[tuple[Gateway, Settings]]:
    settings = settings_factory(
        relay_url=sink.url,
        status_token=STATUS_TOKEN,
        imap_mailboxes=[
            dovecot.mailbox_settings(name="bok-imap", poll_seconds=1),
            dovecot.mailbox_settings(name="zle-haslo", password="not-the-password", poll_seconds=1),
        ],
    )
    dovecot.append(make_mail(sender="imap@klient.example", subject="Z IMAP").as_bytes(policy=SMTP))
    gateway = Gateway(settings)
    await gateway.start()
    try:
        for number in range(3):
            assert (await send(settings, make_mail(subject=f"Awaria {number}")))[0] == 250
        assert (await send(settings, make_mail(sender=UNREACHABLE, subject="Adres nie istnieje")))[0] == 250
        spam = make_mail(sender="tani@spam.example", subject="Tanie leki", headers={"X-Spam-Flag": "YES"})
        assert (await send(settings, spam))[0] == 250  # from the trusted relay (127.0.0.1), flagged
        async with httpx.AsyncClient(base_url=base(settings), timeout=60) as client:
            await put_directory(client, settings)
            assert (await new_message(client, bearer(token(settings)))).status_code == 201
        await wait_for_health(settings, lambda body: _journaled(gateway) >= 7, "the IMAP message")
        await settle(gateway, outbox=True)
        yield gateway, settings
    finally:
        await gateway.stop()


def base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.http_port}"


def _journaled(gateway: Gateway) -> int:
    from sqlalchemy import func
    from sqlmodel import select

    from store.db import reading
    from store.models import JournalEntry

    assert gateway.components is not None
    with reading(gateway.components.journal_engine) as session:
        return session.exec(select(func.count()).select_from(JournalEntry)).one()


async def wait_for_health(settings: Settings, condition, what: str, timeout: float = 30) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Poll /healthz until `condition(body)` holds; /healthz must answer 200 all along."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=base(settings), timeout=10) as client:
        while True:
            response = await client.get("/healthz")
            assert response.status_code == 200, response.text
            body = response.json()
            if condition(body):
                return body
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {body}"
            await asyncio.sleep(0.1)


async def test_healthz_names_a_failing_mailbox_and_stays_ready(traffic) -> None:
    _, settings = traffic
    body = await wait_for_health(
        settings,
        lambda body: body["imap_failing"] == ["zle-haslo"] and body["imap"]["bok-imap"]["connected"],
        "the wrong password to show and the good mailbox to connect",
    )
    assert body["status"] == "ok"
    assert body["imap"]["zle-haslo"]["last_error"]
    assert body["imap"]["bok-imap"]["last_error"] is None


async def test_status_needs_a_token(traffic) -> None:
    _, settings = traffic
    async with httpx.AsyncClient(base_url=base(settings), timeout=30) as client:
        assert (await client.get("/status")).status_code == 401
        assert (await client.get("/status?token=zgadywany")).status_code == 401
        login = bearer(token(settings))  # a customer's login is not an operator
        assert (await client.get("/status", headers=login)).status_code == 401
        system = bearer(token(settings, account="panel", role="system", sub="panel@hosting.example"))
        page = await client.get("/status", headers=system)
        assert page.status_code == 200 and "Mail per hour" in page.text
        redirect = await client.get(f"/status?token={STATUS_TOKEN}")
        assert redirect.status_code == 303 and redirect.headers["location"] == "/status"
        assert "httponly" in redirect.headers["set-cookie"].lower()
        assert (await client.get("/status")).status_code == 200  # the cookie the redirect set


async def test_the_status_page_in_chromium(traffic, sink: RelaySink) -> None:
    _, settings = traffic
    await wait_for_health(settings, lambda body: body["imap_failing"] == ["zle-haslo"], "the failing mailbox")
    async with browser_page(width=1280, height=1000) as page:
        await page.goto(f"{base(settings)}/status?token={STATUS_TOKEN}")
        assert page.url == f"{base(settings)}/status"  # the token left the address bar
        await expect(page.get_by_role("heading", name=re.compile("mail gateway status"))).to_be_visible()
        await expect(page.locator("#instance")).to_have_text(settings.instance_name)
        await expect(page.locator("#backlog .value")).to_have_text("0")
        await expect(page.locator("#quarantine .value")).to_have_text("0")
        await expect(page.locator("#outbox .value")).to_have_text("0")
        await expect(page.locator("#failed .value")).to_have_text("1")
        await expect(page.locator("#spam .value")).to_have_text("1")
        await expect(page.locator("#failures")).to_contain_text(UNREACHABLE)
        await expect(page.locator("#failures")).to_contain_text("550")
        # 3 SMTP, 1 refused-address SMTP, 1 spam, 1 panel, 1 IMAP: accepted and processed in the last hours.
        await expect(page.locator("#total-accepted strong")).to_have_text("7")
        await expect(page.locator("#total-processed strong")).to_have_text("7")
        # Nothing queued when the page was drawn (checked above), so what the relay took is final now.
        sent = len(sink.accepted)
        assert sent > 0
        await expect(page.locator("#total-sent strong")).to_have_text(str(sent))
        failing = page.locator('tr[data-mailbox="zle-haslo"]')
        await expect(failing.locator(".state")).to_have_class(re.compile(r"\bbad\b"))
        await expect(page.locator('tr[data-mailbox="bok-imap"] .state')).not_to_have_class(re.compile(r"\bbad\b"))
        chart = page.locator("svg.chart")
        await expect(chart).to_be_visible()
        assert await chart.locator("rect.bar").count() == 3 * 24  # accepted, processed, sent per hour
        assert await page.locator("script").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "status.png", full_page=True)


async def test_metrics_count_imap_mail_and_show_which_mailbox_fails(traffic, dovecot: DovecotServer) -> None:
    from tests.test_metrics import scrape, value

    _, settings = traffic
    instance = settings.instance_name
    await wait_for_health(settings, lambda body: body["imap_failing"] == ["zle-haslo"], "the failing mailbox")
    before, _ = await scrape(settings)
    dovecot.append(make_mail(sender="druga@klient.example", subject="Druga z IMAP").as_bytes(policy=SMTP))
    accepted = "gateway_messages_accepted_total"
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        after, _ = await scrape(settings)
        fetched = value(after, accepted, source="imap", instance=instance) - value(
            before, accepted, source="imap", instance=instance
        )
        if fetched >= 1:
            break
        assert asyncio.get_running_loop().time() < deadline, "the IMAP message was never counted"
        await asyncio.sleep(0.1)
    assert fetched == 1
    assert value(after, "gateway_imap_mailbox_up", instance=instance, mailbox="bok-imap") == 1
    assert value(after, "gateway_imap_mailbox_up", instance=instance, mailbox="zle-haslo") == 0
    assert ("gateway_imap_mailbox_up", frozenset({("instance", instance), ("mailbox", "zle-haslo")})) in after
