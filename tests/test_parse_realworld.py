"""Real-world mail as other help desks see it (issue 14), on messages built here: charsets that are
undeclared or lie, the requester recovered from wherever it is, text before the headers, text the
database can store (issue 12 item 5), and the digest that tells a duplicate from a reused Message-ID."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from gateway.parse import ParsedMessage, parse_message

GB_SUBJECT = "关于服务器续费的问题"  # "about renewing the server"
GB_BODY = "您好，我们的服务器下个月到期，请问如何续费？谢谢。"
GB_INNER_SUBJECT = "发票和付款确认"  # "invoice and payment confirmation"


def crlf(text: str) -> bytes:
    """Header lines written as text; code points < 256 become those bytes (raw 8-bit on purpose)."""
    return text.strip("\n").replace("\n", "\r\n").encode("latin-1")


def every_text(value: object, path: str = "parsed") -> list[tuple[str, str]]:
    """Every str inside a parsed message, with where it sits."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, tuple | list):
        return [found for index, item in enumerate(value) for found in every_text(item, f"{path}[{index}]")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            found for f in dataclasses.fields(value) for found in every_text(getattr(value, f.name), f"{path}.{f.name}")
        ]
    return []


def assert_storable(parsed: ParsedMessage) -> None:
    for path, text in every_text(parsed):
        assert "\x00" not in text, path
        text.encode("utf-8")  # raises on a lone surrogate ("surrogates not allowed")


# -- 1. undeclared and lying charsets ---------------------------------------------------------------


def gb2312_message() -> bytes:
    inner = (
        b"From: billing@example.cn\r\nTo: li.wei@example.cn\r\nSubject: "
        + GB_INNER_SUBJECT.encode("gb2312")
        + b"\r\nMessage-ID: <inner@example.cn>\r\n\r\nInvoice attached.\r\n"
    )
    return (
        b"From: Li Wei <li.wei@example.cn>\r\nTo: bok@example.test\r\nSubject: "
        + GB_SUBJECT.encode("gb2312")
        + b"\r\nMessage-ID: <gb@example.cn>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="gb"\r\n\r\n'
        # The body claims Latin-1 but is GB2312, as the mailer that wrote the subject also did.
        b"--gb\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + GB_BODY.encode("gb2312")
        + b"\r\n--gb\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner
        + b"--gb--\r\n"
    )


def test_raw_gb2312_subject_body_and_attached_message_name() -> None:
    parsed = parse_message(gb2312_message())
    assert parsed.subject == GB_SUBJECT
    assert parsed.text.strip() == GB_BODY
    assert [a.filename for a in parsed.attachments] == [f"{GB_INNER_SUBJECT}.eml"]
    assert any("without a declared charset read as gb" in d for d in parsed.defects)
    assert any("declared 'iso-8859-1' but the bytes read as gb" in d for d in parsed.defects)
    assert parsed.from_address == "li.wei@example.cn"


@pytest.mark.parametrize(
    ("codec", "subject"),
    [("cp1250", "Pilne: ważna faktura za śmieci"), ("iso-8859-2", "Łukasz Świątek - zażółć gęślą jaźń")],
)
def test_raw_polish_subject_stays_polish(codec: str, subject: str) -> None:
    raw = b"From: jan@example.pl\r\nTo: bok@example.test\r\nSubject: " + subject.encode(codec) + b"\r\n\r\nx\r\n"
    assert parse_message(raw).subject == subject


def test_raw_utf8_header_beside_a_gb2312_one_stays_utf8() -> None:
    raw = (
        b"From: =?utf-8?q?x?= <a@example.cn>\r\nTo: bok@example.test\r\nSubject: "
        + GB_SUBJECT.encode("gb2312")
        + b"\r\nX-Note: "
        + "Zażółć".encode()
        + b"\r\n\r\nx\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == GB_SUBJECT
    assert parsed.header("x-note") == "Zażółć"


def test_undecodable_8bit_header_bytes_never_raise() -> None:
    raw = crlf(
        "From: Jan \xff\x81 Nowak <jan@example.pl>\n"
        "To: bok@example.test\n"
        "Subject: Faktura \xff\x81\x8d\x8f\n"
        "Message-ID: <nul\xff@example.pl>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        'Content-Type: text/plain; charset="utf-\xff8"\n'
        "\n"
        "Tre\xff\x81\n"
        "--b\n"
        'Content-Type: application/octet-stream; name="plik\xff\x81.bin"\n'
        "Content-ID: <c\xff@example.pl>\n"
        "\n"
        "xx\n"
        "--b--\n"
    )
    parsed = parse_message(raw)
    assert_storable(parsed)
    assert parsed.from_address == "jan@example.pl"
    assert parsed.subject.startswith("Faktura ")
    assert parsed.text.startswith("Tre")
    [attachment] = parsed.attachments
    assert attachment.filename.startswith("plik") and attachment.filename.endswith(".bin")
    assert attachment.content == b"xx"


# -- 2. the requester, wherever it is -----------------------------------------------------------------


def requester_of(header_lines: str, *, envelope_sender: str | None = None) -> ParsedMessage:
    raw = crlf(header_lines + "\nTo: bok@example.test\nSubject: Pomoc\nMessage-ID: <r@example.pl>") + b"\r\n\r\nx\r\n"
    return parse_message(raw, envelope_sender=envelope_sender)


def test_garbage_first_from_then_a_valid_one() -> None:
    parsed = requester_of("From: garbage\nFrom: Jan Nowak <jan.nowak@example.pl>")
    assert (parsed.from_address, parsed.from_name, parsed.requester_source) == (
        "jan.nowak@example.pl",
        "Jan Nowak",
        "from",
    )
    assert any("From address 2 used" in d for d in parsed.defects)


@pytest.mark.parametrize(
    ("lines", "address", "name", "source"),
    [
        ("From: <>\nReply-To: Anna <anna@example.pl>", "anna@example.pl", "Anna", "reply-to"),
        (
            "From: =?utf-8?q?Zofia_=C5=81=C4=85cka?= <>\nSender: zofia@example.pl",
            "zofia@example.pl",
            "Zofia Łącka",
            "sender",
        ),
        ("From: Biuro <>\nReturn-Path: <biuro@example.pl>", "biuro@example.pl", "Biuro", "return-path"),
        ("From: Serwis <>\nSender: <>\nReply-To: <>\nReturn-Path: <>", "serwis@example.pl", "Serwis", "envelope"),
    ],
)
def test_empty_from_address_recovered_down_the_chain(lines: str, address: str, name: str, source: str) -> None:
    parsed = requester_of(lines, envelope_sender="Serwis@Example.PL")
    assert (parsed.from_address, parsed.from_name, parsed.requester_source) == (address, name, source)
    assert any(d.startswith("requester: ") for d in parsed.defects)


def test_no_address_anywhere_gives_empty_requester_and_says_so() -> None:
    parsed = requester_of("From: Nobody <>", envelope_sender="")
    assert (parsed.from_address, parsed.from_name, parsed.requester_source) == ("", "Nobody", "")
    assert "requester: no usable sender address anywhere" in parsed.defects


def test_quoted_local_part_with_spaces() -> None:
    parsed = requester_of('From: "Jan Nowak" <"jan nowak"@example.pl>')
    assert (parsed.from_address, parsed.from_name, parsed.requester_source) == (
        '"jan nowak"@example.pl',
        "Jan Nowak",
        "from",
    )


def test_trailing_dot_in_the_domain() -> None:
    parsed = requester_of("From: Jan <jan@example.pl.>")
    assert (parsed.from_address, parsed.requester_source) == ("jan@example.pl", "from")
    assert any("trailing dot removed" in d for d in parsed.defects)


def test_display_name_with_an_at_sign_and_the_address_in_brackets() -> None:
    parsed = requester_of("From: jan.nowak@exam <jan.nowak@example.pl>")
    assert parsed.from_address == "jan.nowak@example.pl"


# -- 3. text before the header block --------------------------------------------------------------


@pytest.mark.parametrize("leading", [b"---- Original email message ----\r\n", b"\r\n", b"Forwarded by script\r\n\r\n"])
def test_text_before_the_headers_is_skipped(leading: bytes) -> None:
    raw = leading + crlf("From: Jan <jan@example.pl>\nTo: bok@example.test\nSubject: Faktura\nMessage-ID: <lead@x.pl>")
    parsed = parse_message(raw + b"\r\n\r\nTre\xc5\x9b\xc4\x87\r\n")
    assert (parsed.from_address, parsed.subject, parsed.message_id) == ("jan@example.pl", "Faktura", "lead@x.pl")
    assert parsed.text == "Treść\n"
    assert any(d.startswith("text before the header block skipped") for d in parsed.defects)


def test_a_body_of_field_like_lines_without_key_fields_is_not_taken_for_headers() -> None:
    raw = b"Hello there\r\nName: Jan\r\nPhone: 123\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "" and "Name: Jan" in parsed.text


# -- NUL and other text the database cannot store (issue 12 item 5) --------------------------------


def test_nul_is_removed_from_every_text_field_and_kept_in_the_raw() -> None:
    raw = crlf(
        "From: Jan\x00 <jan@example.pl>\n"
        "To: bok@example.test\n"
        "Subject: Fak\x00tura\n"
        "Message-ID: <a\x00b@example.pl>\n"
        "References: <r\x00@example.pl>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        'Content-Type: multipart/alternative; boundary="alt"\n'
        "\n"
        "--alt\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "raw\x00 and qp=00 nul\n"
        "--alt\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>h\x00tml</p>\n"
        "--alt--\n"
        "--b\n"
        'Content-Type: application/octet-stream; name="a\x00b.bin"\n'
        "\n"
        "\x00\x01\n"
        "--b--\n"
    )
    parsed = parse_message(raw)
    assert_storable(parsed)
    assert parsed.subject == "Faktura"
    assert parsed.message_id == "ab@example.pl"
    assert parsed.references == ("r@example.pl",)
    assert parsed.text == "raw and qp nul"
    assert parsed.html == "<p>html</p>"
    assert [(a.filename, a.content) for a in parsed.attachments] == [("ab.bin", b"\x00\x01")]
    assert b"\x00" in raw  # what the journal keeps is untouched


# -- 6. a duplicate is the same message, not merely the same Message-ID -----------------------------


def digest_message(
    *, trace: str = "", body: str = "Treść", attachment: bytes = b"%PDF-1", message_id: str = "d@x.pl"
) -> bytes:
    text = (
        f"{trace}From: Jan <jan@example.pl>\nTo: bok@example.test\nSubject: Faktura\n"
        f"Message-ID: <{message_id}>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n'
        f"--b\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
        '--b\nContent-Type: application/pdf; name="f.pdf"\nContent-Transfer-Encoding: base64\n\n'
        f"{base64.b64encode(attachment).decode()}\n--b--\n"
    )
    return text.replace("\n", "\r\n").encode("utf-8")


def test_same_message_through_other_hops_has_the_same_digest() -> None:
    plain = parse_message(digest_message())
    retried = parse_message(
        digest_message(
            trace="Received: from mx2 by gw; Mon, 1 Dec 2026 00:00:00 +0000\nReturn-Path: <bounce@x.pl>\n"
            "Delivered-To: bok@example.test\nX-Spam-Score: 1.0\nDKIM-Signature: v=1; d=x.pl\n"
            "Authentication-Results: mx; spf=pass\nDate: Tue, 1 Dec 2026 01:00:00 +0100\n",
            message_id="other@x.pl",
        )
    )
    assert len(plain.content_digest) == 64
    assert plain.content_digest == retried.content_digest


@pytest.mark.parametrize(
    "changed", [{"body": "Inna treść"}, {"attachment": b"%PDF-2"}], ids=["other body", "other attachment"]
)
def test_a_reused_message_id_on_another_message_has_another_digest(changed: dict[str, object]) -> None:
    first = parse_message(digest_message())
    second = parse_message(digest_message(**changed))  # type: ignore[arg-type]
    assert first.message_id == second.message_id
    assert first.content_digest != second.content_digest
