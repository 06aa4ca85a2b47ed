"""The bytes we send read back exactly as written, in the stdlib's strict parser (issue 13 item 3).

compose.py writes headers and MIME by hand for speed; these tests hold it to what a mail client
sees: the text part (long Polish lines, "=" signs, the "-- " signature delimiter, dots and "From "
at line starts), the HTML part, the subject, addresses, and attachment names in both forms.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

from gateway.outbound.compose import (
    AttachmentRef,
    address_header,
    compose,
    encoded_text,
    expand_attachments,
    referenced_blobs,
)

TEXT = (
    "Dzień dobry,\n\n"
    + "Zażółć gęślą jaźń – bardzo długa linia, która musi zostać złamana miękko przez quoted-printable. " * 3
    + "\n1 + 1 = 2, a=3D nie jest kodem\n"
    + ".kropka na początku\nFrom the start of a line\n"
    + "spacja na końcu \n"
    + "-- \nBiuro Obsługi Klienta\n"
)
HTML = "<p>Zażółć <b>gęślą</b> jaźń</p>\n"


def content(part: object) -> str:
    """A text part's content as a client shows it (the parser keeps the wire's CRLF)."""
    assert isinstance(part, EmailMessage)
    return str(part.get_content()).replace("\r\n", "\n")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_text_html_and_headers_read_back_exactly() -> None:
    subject = "[#2026-000123] Re: Nie działa poczta – pilne, bardzo pilne, naprawdę bardzo pilne"
    raw = compose(
        headers=[
            ("From", address_header("Biuro Obsługi Klienta", "bok@example.test")),
            ("To", address_header("", "zażółć.jaźń@klient.example")),
            ("Subject", encoded_text(subject)),
            ("Message-ID", "<abc@example.test>"),
        ],
        text=TEXT,
        html=HTML,
        attachments=[],
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    message = parse(raw)
    assert not message.defects
    assert str(message["Subject"]) == subject
    assert str(message["To"]) == "zażółć.jaźń@klient.example"
    assert message["From"].addresses[0].display_name == "Biuro Obsługi Klienta"
    assert message.get_content_type() == "multipart/alternative"
    assert content(message.get_body(("plain",))) == TEXT
    assert content(message.get_body(("html",))) == HTML
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 76  # quoted-printable's soft breaks


def test_attachment_names_and_expansion() -> None:
    blobs = {"a" * 64: b"%PDF-1.4 faktura", "b" * 64: bytes(range(256)) * 10}
    refs = [
        AttachmentRef("faktura 09.pdf", "application/pdf", "a" * 64, 16),
        AttachmentRef('Umowa – wrzesień "ostateczna".bin', "Application/Octet-Stream", "b" * 64, 2560),
        AttachmentRef("x.bin", "not a type\r\nBcc: someone@evil.example", "a" * 64, 16),
    ]
    raw = compose(headers=[("Subject", "x")], text="treść\n", html=None, attachments=refs)
    assert referenced_blobs(raw) == ["a" * 64, "b" * 64, "a" * 64]
    assert blobs["b" * 64] not in raw
    message = parse(expand_attachments(raw, blobs.get))
    assert not message.defects and "Bcc" not in message
    parts = list(message.iter_attachments())
    assert [part.get_filename() for part in parts] == [ref.filename for ref in refs]
    assert [part.get_content_type() for part in parts] == ["application/pdf", "application/octet-stream"] * 1 + [
        "application/octet-stream"
    ]
    assert [part.get_payload(decode=True) for part in parts] == [blobs[ref.sha256] for ref in refs]
    assert content(message.get_body(("plain",))) == "treść\n"


def test_subjects_read_back_exactly_in_lines_of_at_most_78() -> None:
    """encoded_text writes RFC 2047 words itself: a character never split between two words, spaces,
    "_", "=" and "?" kept, lines folded short enough, whatever the mix of scripts."""
    subjects = [
        "[#2026-000123] Re: Nie działa poczta na serwerze – pilne zgłoszenie",
        "Zażółć gęślą jaźń " * 8,
        "x" * 60 + " ąę",
        "[#1] " + "日本語のテキスト" * 10,
        "a_b=c?d ż =?utf-8?q?x?=",
        "ż",
        "Re: Fwd: " + "ą" * 200,
        "emoji 😀 and tab\tend ",
    ]
    for subject in subjects:
        value = encoded_text(subject)
        raw = compose(headers=[("Subject", value)], text="x", html=None, attachments=[])
        head = raw.split(b"\r\nMIME-Version", 1)[0]
        assert all(len(line) <= 78 for line in head.split(b"\r\n")), subject
        assert head.isascii()
        assert str(parse(raw)["subject"]) == subject
