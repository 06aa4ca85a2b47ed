"""The SMTP listener over loopback: extensions, recipient policy, SIZE, durability answers."""

from __future__ import annotations

import asyncio
import hashlib

import aiosmtplib

from tests.helpers import SUPPORT, all_cases, make_mail, send, settle


async def test_ehlo_advertises_the_extensions(gateway, settings):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port) as client:
        await client.ehlo()
        extensions = client.esmtp_extensions
    assert extensions["size"] == str(64 * 1024 * 1024)
    for name in ("8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert name in extensions


async def test_unknown_recipient_is_refused_with_550(gateway, settings):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port) as client:
        await client.mail("someone@klient.example")
        try:
            await client.rcpt("nobody@example.test")
        except aiosmtplib.SMTPRecipientRefused as error:
            assert error.code == 550
            assert error.message.startswith("5.1.1")
        else:
            raise AssertionError("unknown recipient accepted")
        # the support address and its plus-extensions are ours
        response = await client.rcpt("bok+anything@example.test")
        assert response.code == 250


async def test_declared_size_over_the_limit_is_refused_before_data(gateway, settings):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port) as client:
        await client.ehlo()
        try:
            await client.mail("big@klient.example", options=[f"SIZE={64 * 1024 * 1024 + 1}"])
        except aiosmtplib.SMTPSenderRefused as error:
            assert error.code == 552 and error.message.startswith("5.3.4")
        else:
            raise AssertionError("oversized SIZE accepted")


async def test_undeclared_data_over_the_limit_gets_552_and_nothing_is_stored(settings_factory):
    from gateway.app import Gateway

    settings = settings_factory(smtp_max_message_bytes=200_000)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        message = make_mail(attachments=[("big.bin", b"x" * 300_000)])
        try:
            await send(settings, message)
        except aiosmtplib.SMTPDataError as error:
            assert error.code == 552 and error.message.startswith("5.3.4")
        else:
            raise AssertionError("oversized DATA accepted")
        code, _ = await send(settings, make_mail())  # the session still works afterwards
        assert code == 250
        await settle(gateway)
        assert len(all_cases(gateway)) == 1
    finally:
        await gateway.stop()


async def test_raw_bytes_are_kept_byte_exact_including_8bit_and_utf8_headers(gateway, settings):
    raw = (
        "From: Zażółć Gęślą <zolc@klient.example>\r\n"
        f"To: {SUPPORT}\r\n"
        "Subject: Łódź – faktura nr 12/2026\r\n"
        "Message-ID: <utf8-raw-1@klient.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Proszę o korektę faktury. Źdźbło.\r\n"
        ".kropka na początku linii\r\n"
    ).encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port) as client:
        await client.ehlo()
        await client.sendmail("zolc@klient.example", [SUPPORT], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    await settle(gateway)
    [case] = all_cases(gateway)
    message = case["messages"][0]
    assert message["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert case["subject"] == "Łódź – faktura nr 12/2026"
    assert "Źdźbło" in message["text"]
    assert ".kropka na początku linii" in message["text"]


async def test_pipelined_commands_are_answered_in_order(gateway, settings):
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.smtp_port)
    await reader.readline()
    writer.write(b"EHLO client.example\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    body = make_mail(subject="pipelined").as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    writer.write(
        b"MAIL FROM:<jan.kowalski@klient.example>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<" + SUPPORT.encode() + b">\r\nDATA\r\n"
    )
    await writer.drain()
    replies = [await reader.readline() for _ in range(4)]
    assert [line[:3] for line in replies] == [b"250", b"550", b"250", b"354"]
    writer.write(body + b"\r\n.\r\nQUIT\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"250 2.0.0")
    writer.close()


# The 451 on a journal that cannot be written: tests/test_contract_outage.py, with a real outage.
