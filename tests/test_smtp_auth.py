"""Optional STARTTLS and AUTH: staff may submit replies on an authenticated session (SPEC §3, §7)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from gateway.app import Gateway
from tests.helpers import STAFF, SUPPORT, all_cases, make_mail, send, settle

PASSWORD = "tajne-hasło-agenta"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_gateway(settings_factory, certificate):  # type: ignore[no-untyped-def]
    cert, key = certificate
    settings = settings_factory(smtp_tls_cert_file=cert, smtp_tls_key_file=key, smtp_auth_users={STAFF: PASSWORD})
    gateway = Gateway(settings)
    await gateway.start()
    yield gateway
    await gateway.stop()


def _client(gateway: Gateway) -> aiosmtplib.SMTP:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.settings.smtp_port, tls_context=context, start_tls=False)


async def test_auth_is_offered_only_after_starttls_and_checks_the_password(tls_gateway):
    async with _client(tls_gateway) as client:
        await client.ehlo()
        assert "starttls" in client.esmtp_extensions and "auth" not in client.esmtp_extensions
        await client.starttls()
        await client.ehlo()
        assert "auth" in client.esmtp_extensions
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login(STAFF, "wrong")


async def test_staff_reply_on_an_authenticated_session_answers_the_customer(tls_gateway):
    settings = tls_gateway.settings
    await send(settings, make_mail(sender="jan@klient.example", subject="Pomocy"))
    await settle(tls_gateway)
    [case] = all_cases(tls_gateway)
    reply = make_mail(sender=STAFF, subject=f"Re: [#{case['number']}] Pomocy", body="Już naprawione.")
    async with _client(tls_gateway) as client:
        await client.ehlo()
        await client.starttls()
        await client.login(STAFF, PASSWORD)
        await client.send_message(reply, recipients=[SUPPORT])
    await settle(tls_gateway)
    [case] = all_cases(tls_gateway)
    outbound = [m for m in case["messages"] if m["direction"] == "outbound" and m["source"] == "staff"]
    assert len(outbound) == 1 and "Już naprawione." in outbound[0]["text"]
    assert case["status"] == "answered"


async def test_the_same_reply_without_authentication_stays_an_internal_note(tls_gateway):
    settings = tls_gateway.settings
    await send(settings, make_mail(sender="jan@klient.example", subject="Pomocy"))
    await settle(tls_gateway)
    [case] = all_cases(tls_gateway)
    await send(settings, make_mail(sender=STAFF, subject=f"Re: [#{case['number']}] Pomocy", body="podszywka"))
    await settle(tls_gateway)
    [case] = all_cases(tls_gateway)
    assert [m["direction"] for m in case["messages"]][-1] == "note"
    assert case["status"] == "open"
