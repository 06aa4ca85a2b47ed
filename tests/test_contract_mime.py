"""Malformed MIME over real SMTP (SPEC §11): accepted, stored raw and byte-exact, the text that can be
read is read, and what was wrong is recorded as defects; never a crash, never quarantine."""

from __future__ import annotations

import hashlib

import pytest

from tests.helpers import SUPPORT, all_cases, send, settle

HEAD = (
    "From: Jan Kowalski <jan.kowalski@klient.example>\r\n"
    f"To: {SUPPORT}\r\n"
    "Message-ID: <{id}@klient.example>\r\n"
    "MIME-Version: 1.0\r\n"
)

MALFORMED = [
    pytest.param(
        "missing-boundary",
        'Subject: Brak granicy\r\nContent-Type: multipart/mixed; boundary="nigdy-nie-wystepuje"\r\n\r\n'
        "Dzień dobry, treść bez żadnej granicy części.\r\n".encode(),
        "treść bez żadnej granicy",
        "Brak granicy",
        id="missing-boundary",
    ),
    pytest.param(
        "no-boundary-parameter",
        "Subject: Bez parametru\r\nContent-Type: multipart/mixed\r\n\r\n"
        "--x\r\nContent-Type: text/plain\r\n\r\nTekst w środku.\r\n--x--\r\n".encode(),
        "Tekst w",
        "Bez parametru",
        id="multipart-without-boundary-parameter",
    ),
    pytest.param(
        "bad-base64",
        b"Subject: Zepsuty base64\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        b"RHppZcWEIGRvYnJ5LCB6ZXBzdXR5IGJhc2U2NA==!!!@@@ nie base64 ***\r\n",
        "Dzień dobry",
        "Zepsuty base64",
        id="bad-base64",
    ),
    pytest.param(
        "8bit-headers",
        # Raw ISO-8859-2 bytes in a header, no encoded-word, nothing declares the charset.
        "Subject: Faktura za usługę, źle zakodowany nagłówek\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n".encode("iso-8859-2")
        + "Proszę o fakturę.\r\n".encode(),
        "Proszę o fakturę",
        "Faktura za usługę, źle zakodowany nagłówek",
        id="8bit-headers-not-utf8",
    ),
    pytest.param(
        "unknown-charset",
        "Subject: Nieznany zestaw znaków\r\nContent-Type: text/plain; charset=x-nie-istnieje-2026\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nZażółć gęślą jaźń, proszę o kontakt.\r\n".encode("iso-8859-2"),
        "proszę o kontakt",
        "Nieznany zestaw znaków",
        id="unknown-charset",
    ),
    pytest.param(
        "truncated",
        b'Subject: Urwana wiadomosc\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPoczatek tresci, potem urwane.\r\n"
        b"--b1\r\nContent-Type: application/pdf; name=faktura.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQKJ\r\n",  # the client ends DATA with CRLF . CRLF: the CRLF is part of the message
        "Poczatek tresci",
        "Urwana wiadomosc",
        id="truncated-no-closing-boundary",
    ),
]


@pytest.mark.parametrize(("name", "tail", "readable", "subject"), MALFORMED)
async def test_malformed_mime_is_accepted_stored_raw_and_read_as_far_as_it_goes(
    gateway, settings, name: str, tail: bytes, readable: str, subject: str
):
    raw = HEAD.format(id=name).encode() + tail
    code, _ = await send(settings, raw, mail_from="jan.kowalski@klient.example")
    assert code == 250
    await settle(gateway)

    [case] = all_cases(gateway)  # stored as a case: not quarantined, not dropped
    [message] = [m for m in case["messages"] if m["direction"] == "inbound"]
    assert message["raw_sha256"] == hashlib.sha256(raw).hexdigest()  # the bytes as received
    assert readable in message["text"]
    assert case["subject"] == message["subject"] == subject
    assert message["defects"], "what was wrong with the message is recorded"
