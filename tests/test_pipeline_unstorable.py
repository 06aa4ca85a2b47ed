"""Characters a database cannot store (NUL on PostgreSQL, lone surrogates anywhere) never quarantine mail.

They are removed from every stored text field; the journal keeps the raw bytes with them. Run on
PostgreSQL with GATEWAY_TEST_BACKEND=postgresql (where NUL used to end in `DataError`).
"""

from __future__ import annotations

import asyncio
import hashlib

from sqlmodel import select

from store.db import reading
from store.models import JournalEntry
from tests.helpers import SUPPORT, all_cases, send, sent_to, settle

SENDER = "nul@klient.example"


def _mail(*, message_id: bytes, subject: bytes, headers: bytes, body: bytes) -> bytes:
    return (
        b"From: Jan \x00Kowalski <" + SENDER.encode() + b">\r\n"
        b"To: " + SUPPORT.encode() + b"\r\n"
        b"Subject: " + subject + b"\r\n"
        b"Message-ID: " + message_id + b"\r\n" + headers + b"\r\n" + body
    )


RAW_NUL = _mail(
    message_id=b"<raw-nul@klient.example>",
    subject=b"Surowy \x00 bajt",
    headers=b"Content-Type: text/plain; charset=utf-8\r\n",
    body=b"Dzie\xc5\x84 dobry,\x00 tu jest NUL.\r\n",
)
QP_NUL = _mail(
    message_id=b"<qp-nul@klient.example>",
    subject=b"=?utf-8?q?Zakodowany_=00_bajt?=",
    headers=b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
    body=b"NUL w QP: =00 koniec.\r\n",
)
ID_NUL = _mail(
    message_id=b"<id-\x00-nul@klient.example>",
    subject=b"NUL w Message-ID",
    headers=b"Content-Type: text/plain; charset=utf-8\r\n",
    body=b"Tekst bez niespodzianek.\r\n",
)


async def test_nul_anywhere_still_makes_a_case_and_an_acknowledgement(gateway, settings):
    for raw in (RAW_NUL, QP_NUL, ID_NUL):
        code, _ = await send(settings, raw, mail_from=SENDER)
        assert code == 250
    await settle(gateway, outbox=True)

    with reading(gateway.components.journal_engine) as session:
        entries = session.exec(select(JournalEntry)).all()
        assert sorted(e.status for e in entries) == ["done"] * 3, [(e.status, e.reason) for e in entries]
        # The journal keeps the bytes exactly as received, NUL and all.
        assert {e.raw_sha256 for e in entries} == {hashlib.sha256(r).hexdigest() for r in (RAW_NUL, QP_NUL, ID_NUL)}

    cases = all_cases(gateway)
    assert len(cases) == 3
    for case in cases:
        assert case["requester"] == SENDER
        message = case["messages"][0]
        stored = [message["text"], message["subject"], message["message_id"], message["from"], case["subject"]]
        assert not any("\x00" in value for value in stored), stored
    by_subject = {case["subject"]: case for case in cases}
    assert by_subject["Surowy  bajt"]["messages"][0]["text"].startswith("Dzień dobry, tu jest NUL.")
    assert by_subject["Zakodowany  bajt"]["messages"][0]["text"].startswith("NUL w QP:  koniec.")
    assert by_subject["NUL w Message-ID"]["messages"][0]["message_id"] == "id--nul@klient.example"

    acknowledged = {str(mail["Subject"]).split("]", 1)[0] + "]" for mail in sent_to(settings, SENDER)}
    assert acknowledged == {f"[#{case['number']}]" for case in cases}


async def _send_raw_envelope(settings, mail_from: bytes, raw: bytes) -> int:
    """MAIL FROM exactly as given (smtplib and aiosmtplib refuse to send a NUL themselves)."""
    reader, writer = await asyncio.open_connection(settings.smtp_host, settings.smtp_port)

    async def reply() -> int:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return int(line[:3])

    try:
        await reply()
        for command in (
            b"EHLO klient.example",
            b"MAIL FROM:<" + mail_from + b"> SMTPUTF8",
            b"RCPT TO:<" + SUPPORT.encode() + b">",
        ):
            writer.write(command + b"\r\n")
            await writer.drain()
            assert await reply() in (250,), command
        writer.write(b"DATA\r\n")
        assert await reply() == 354
        writer.write(raw + b"\r\n.\r\n")
        return await reply()
    finally:
        writer.close()


async def test_unstorable_envelope_and_overlong_values_still_make_a_case(gateway, settings):
    # No usable From: the requester comes from the envelope, which carries a NUL.
    no_from = (
        b"From: <>\r\nTo: " + SUPPORT.encode() + b"\r\nSubject: Bez nadawcy\r\n"
        b"Message-ID: <envelope-nul@klient.example>\r\n\r\nTekst.\r\n"
    )
    assert await _send_raw_envelope(settings, b"koperta\x00@klient.example", no_from) == 250
    # A Message-ID longer than its column (broken mailers write such things).
    long_id = b"<" + b"x" * 1500 + b"@klient.example>"
    overlong = (
        b"From: dlugi@klient.example\r\nTo: " + SUPPORT.encode() + b"\r\nSubject: Bardzo dlugi identyfikator\r\n"
        b"Message-ID: " + long_id + b"\r\n\r\nTekst.\r\n"
    )
    code, _ = await send(settings, overlong, mail_from="dlugi@klient.example")
    assert code == 250
    await settle(gateway, outbox=True)

    with reading(gateway.components.journal_engine) as session:
        entries = session.exec(select(JournalEntry)).all()
        assert [(e.status, e.reason) for e in entries] == [("done", None)] * 2
    requesters = {case["requester"] for case in all_cases(gateway)}
    assert requesters == {"koperta@klient.example", "dlugi@klient.example"}
    assert sent_to(settings, "koperta@klient.example") and sent_to(settings, "dlugi@klient.example")
