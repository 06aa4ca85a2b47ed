"""The 15 MiB per-attachment limit over real SMTP (SPEC §5), and storage by SHA-256."""

from __future__ import annotations

import email
import hashlib
from email import policy

from tests.helpers import all_cases, make_mail, send, sent_mail, settle

LIMIT = 15 * 1024 * 1024
CUSTOMER = "jan.kowalski@klient.example"


async def test_exactly_the_limit_is_accepted_and_one_byte_more_is_refused(gateway, settings):
    at_limit = b"a" * LIMIT
    over_limit = b"b" * (LIMIT + 1)
    small = b"%PDF-1.4 small invoice"
    message = make_mail(
        sender=CUSTOMER,
        subject="Załączniki",
        body="Treść zostaje.",
        attachments=[("granica.bin", at_limit), ("za-duzy.bin", over_limit), ("faktura.pdf", small)],
    )
    assert (await send(settings, message))[0] == 250
    await settle(gateway, outbox=True)
    [case] = all_cases(gateway)
    inbound = case["messages"][0]
    assert "Treść zostaje." in inbound["text"]
    by_name = {a["filename"]: a for a in inbound["attachments"]}
    assert by_name["granica.bin"]["size"] == LIMIT and not by_name["granica.bin"]["refused"]
    assert by_name["granica.bin"]["sha256"] == hashlib.sha256(at_limit).hexdigest()
    refused = by_name["za-duzy.bin"]
    assert refused["refused"] and refused["size"] == LIMIT + 1 and refused["sha256"] is None
    assert refused["content_type"] == "application/octet-stream" and str(LIMIT) in refused["reason"]
    assert not by_name["faktura.pdf"]["refused"]

    # contents are outside the rows, once by SHA-256; the refused one is not stored at all
    blobs = settings.data_dir / "blobs"
    stored = {path.name for path in blobs.rglob("*") if path.is_file()}
    assert hashlib.sha256(at_limit).hexdigest() in stored
    assert hashlib.sha256(over_limit).hexdigest() not in stored

    # the sender gets exactly one notice naming the refused file and the limit
    to_customer = [email.message_from_bytes(raw, policy=policy.default) for raw in sent_mail(settings)]
    to_customer = [m for m in to_customer if CUSTOMER in str(m["To"])]
    notices = [m for m in to_customer if "za-duzy.bin" in m.get_body(("plain",)).get_content()]
    assert len(notices) == 1
    text = notices[0].get_body(("plain",)).get_content()
    assert "granica.bin" not in text and "15 728 640" in text


async def test_identical_attachments_share_storage(gateway, settings):
    content = b"the same logo" * 1000
    for subject in ("pierwsza", "druga"):
        await send(settings, make_mail(subject=subject, attachments=[("logo.png", content)]))
    await settle(gateway)
    files = [path for path in (settings.data_dir / "blobs").rglob("*") if path.is_file()]
    assert [path.name for path in files] == [hashlib.sha256(content).hexdigest()]
    assert len(all_cases(gateway)) == 2


async def test_attachment_names_are_never_paths(gateway, settings):
    raw = (
        b"From: jan@klient.example\r\nTo: bok@example.test\r\nSubject: zly plik\r\n"
        b"Message-ID: <trav@klient.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhej\r\n'
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="../../etc/passwd"\r\n\r\nroot:x\r\n--b--\r\n'
    )
    await send(settings, raw, mail_from="jan@klient.example")
    await settle(gateway)
    [case] = all_cases(gateway)
    [attachment] = case["messages"][0]["attachments"]
    assert attachment["filename"] == "passwd"
