"""Focused tests of gateway.parse: charsets, names, identifiers, structure, reports, degradation."""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import datetime
from pathlib import Path

import pytest

from gateway.parse import ParsedMessage, html_to_text, parse_message

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_file(relative: str) -> bytes:
    path = CORPUS / relative
    if not path.is_file():
        pytest.skip(f"shared corpus file {relative} is not present at {CORPUS}")
    return path.read_bytes()


def message(headers: str, body: bytes = b"Hello\r\n", *, message_id: bool = True) -> bytes:
    """A message from header lines (LF-separated; code points < 256 become those bytes) and a raw body."""
    lines = ["From: Jan Nowak <Jan.Nowak@Example.PL>", "To: bok@example.test"]
    if message_id:
        lines.append("Message-ID: <abc@example.pl>")
    lines += [line for line in headers.strip().split("\n") if line]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def mixed(*parts: bytes, boundary: str = "XyZ") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return message(f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"', body)


def attachment_part(disposition: str, content: bytes = b"PDF!", ctype: str = "application/pdf") -> bytes:
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return (
        f"Content-Type: {ctype}\r\nContent-Disposition: {disposition}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + encoded


TEXT_PART = b"Content-Type: text/plain; charset=utf-8\r\n\r\nZobacz za\xc5\x82\xc4\x85cznik.\r\n"


# -- Polish charsets ----------------------------------------------------------------------------


def test_iso_8859_2_subject_and_body() -> None:
    raw = message(
        "Subject: =?ISO-8859-2?Q?Zg=B3oszenie_b=B3=EAdu_w_poczcie?=\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=ISO-8859-2\nContent-Transfer-Encoding: 8bit",
        "Dzień dobry, proszę o pomoc. Żółć, gęś, jaźń.\r\n".encode("iso-8859-2"),
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Zgłoszenie błędu w poczcie"
    assert parsed.text == "Dzień dobry, proszę o pomoc. Żółć, gęś, jaźń.\n"
    assert parsed.defects == ()


def test_windows_1250_subject_and_quoted_printable_body() -> None:
    raw = message(
        "Subject: =?windows-1250?Q?Problem_z_poczt=B9_=96_=9Cwi=EAto?=\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=windows-1250\n"
        "Content-Transfer-Encoding: quoted-printable",
        b"Z powa=BFaniem,=\r\n =8Cliwi=F1ski\r\n",
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Problem z pocztą – święto"
    assert parsed.text == "Z poważaniem, Śliwiński\n"


def test_windows_1250_display_name_and_raw_8bit_header() -> None:
    raw = message("Subject: Zg\xb3oszenie b\xb3\xeadu")  # raw Windows-1250 bytes in a header
    raw = raw.replace(b"Jan Nowak", b"=?windows-1250?B?r2FuZXRhIKPqY2th?=")
    parsed = parse_message(raw)
    assert parsed.from_name == "Żaneta Łęcka"
    assert parsed.from_address == "jan.nowak@example.pl"
    assert parsed.subject == "Zgłoszenie błędu"


def test_lying_charset_falls_back_and_records_a_defect() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-2",
        "Dziękuję, działa.\r\n".encode(),
    )
    parsed = parse_message(raw)
    assert parsed.text == "Dziękuję, działa.\n"
    assert any("UTF-8" in d for d in parsed.defects)


def test_x_unknown_charset_degrades_to_best_effort() -> None:
    raw = message(
        "Subject: =?x-unknown?q?Za=BF=F3=B3=E6?=\nMIME-Version: 1.0\nContent-Type: text/plain; charset=X-UNKNOWN",
        "Zażółć gęślą jaźń\r\n".encode("cp1250"),
    )
    parsed = parse_message(raw)
    assert parsed.text == "Zażółć gęślą jaźń\n"
    assert parsed.subject == "Zażółć"
    assert "text/plain: unknown charset 'x-unknown'; decoded best effort" in parsed.defects
    assert "header subject: unknown charset 'x-unknown'; decoded best effort" in parsed.defects


def test_x_unknown_charset_in_corpus() -> None:
    parsed = parse_message(corpus_file("mikel-mail/plain_emails/raw_email10.eml"))
    assert parsed.text.startswith("Test test. Hi. Waving. m")
    assert any("x-unknown" in d for d in parsed.defects)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("mikel-mail/multi_charset/japanese_iso_2022.eml", "すみません。"),
        ("mikel-mail/multi_charset/japanese_shift_jis.eml", "あいうえお"),
        ("mikel-mail/multi_charset/ks_c_5601-1987.eml", "스티해"),
    ],
)
def test_asian_charsets(relative: str, expected: str) -> None:
    assert expected in parse_message(corpus_file(relative)).text


# -- attachment names ---------------------------------------------------------------------------


def test_rfc2231_filename() -> None:
    parsed = parse_message(mixed(TEXT_PART, attachment_part("attachment; filename*=utf-8''%C5%BC%C3%B3%C5%82w.pdf")))
    assert parsed.text == "Zobacz załącznik.\n"
    assert [(a.filename, a.content_type, a.content) for a in parsed.attachments] == [
        ("żółw.pdf", "application/pdf", b"PDF!")
    ]


def test_rfc2231_continuation_filename() -> None:
    disposition = "attachment;\r\n filename*0*=utf-8''Faktura%20korekta%20;\r\n filename*1*=%C5%BC%C3%B3%C5%82w.pdf"
    parsed = parse_message(mixed(TEXT_PART, attachment_part(disposition)))
    assert parsed.attachments[0].filename == "Faktura korekta żółw.pdf"


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="=?utf-8?B?xbvDs8WCdyBpIGfEmcWbLnBkZg==?="',
        'attachment; filename="=?iso-8859-2?Q?=AF=F3=B3w_i_g=EA=B6.pdf?="',
    ],
)
def test_encoded_word_filename(disposition: str) -> None:
    parsed = parse_message(mixed(TEXT_PART, attachment_part(disposition)))
    assert parsed.attachments[0].filename == "Żółw i gęś.pdf"


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\x\\\\y.txt"', "y.txt"),
        ("attachment; filename*=utf-8''..%2F..%2Fetc%2Fshadow", "shadow"),
        ('attachment; filename="bad\x01name\x7f.txt"', "badname.txt"),
        ('attachment; filename="invoice\u202egpj.exe"', "invoicegpj.exe"),
        ('attachment; filename=".."', None),
    ],
)
def test_filename_is_never_a_path(disposition: str, expected: str | None) -> None:
    parsed = parse_message(mixed(TEXT_PART, attachment_part(disposition)))
    name = parsed.attachments[0].filename
    assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
    assert all(ord(ch) >= 32 and ch not in "\x7f\u202e" for ch in name)
    if expected is not None:
        assert name == expected


def test_missing_name_is_generated_from_the_content_type() -> None:
    parsed = parse_message(mixed(TEXT_PART, attachment_part("attachment", b"\x89PNG", "image/png")))
    assert parsed.attachments[0].filename == "attachment-1.png"
    parsed = parse_message(mixed(TEXT_PART, attachment_part("attachment", b"?", "application/x-no-such-type")))
    assert parsed.attachments[0].filename == "attachment-1.bin"


# -- identifiers, addresses, dates ----------------------------------------------------------------


def test_missing_message_id_is_synthesised_from_the_raw_bytes() -> None:
    raw = message("Subject: x", message_id=False)
    parsed = parse_message(raw)
    assert parsed.message_id == f"{hashlib.sha256(raw).hexdigest()[:32]}@synthesised.invalid"
    assert parsed.message_id_synthesised is True


def test_empty_message_id_is_synthesised() -> None:
    parsed = parse_message(message("Message-ID:   ", message_id=False))
    assert parsed.message_id_synthesised and parsed.message_id.endswith("@synthesised.invalid")


def test_threading_headers_without_brackets_tolerating_garbage() -> None:
    raw = message(
        "In-Reply-To: <case-1.ack@example.test> (sent earlier)\nReferences: <a@x> garbage, <b@y>\n <c@z>\t<not closed"
    )
    parsed = parse_message(raw)
    assert parsed.message_id == "abc@example.pl" and not parsed.message_id_synthesised
    assert parsed.in_reply_to == ("case-1.ack@example.test",)
    assert parsed.references == ("a@x", "b@y", "c@z")


def test_addresses_are_lower_case_and_headers_decoded() -> None:
    raw = message(
        "Cc: =?utf-8?q?Ma=C5=82gorzata?= <M.Krol@Klient.PL>, other@EXAMPLE.com\n"
        "Reply-To: Biuro <Biuro@Firma.PL>\nTo: second@Example.TEST"
    )
    parsed = parse_message(raw)
    assert parsed.from_address == "jan.nowak@example.pl"
    assert parsed.from_name == "Jan Nowak"
    assert parsed.from_header == "Jan Nowak <Jan.Nowak@Example.PL>"
    assert parsed.to == ("bok@example.test", "second@example.test")
    assert parsed.cc == ("m.krol@klient.pl", "other@example.com")
    assert parsed.reply_to == ("biuro@firma.pl",)
    assert parsed.cc_header == "Małgorzata <M.Krol@Klient.PL>, other@EXAMPLE.com"
    assert ("cc", parsed.cc_header) in parsed.headers
    assert parsed.header("CC") == parsed.cc_header


def test_unparseable_from_gives_an_empty_address() -> None:
    raw = message("Subject: x").replace(b"Jan Nowak <Jan.Nowak@Example.PL>", b"undisclosed-recipients:;")
    parsed = parse_message(raw)
    assert parsed.from_address == ""


def test_group_header_that_breaks_the_policy_is_read_as_text() -> None:
    parsed = parse_message(corpus_file("mimekit/messages/delivery-status.txt"))
    assert parsed.to == ()
    assert parsed.to_header.startswith("unlisted-recipients:;")
    assert any("'Group' object has no attribute 'local_part'" in d for d in parsed.defects)


def test_date_is_naive_utc() -> None:
    parsed = parse_message(message("Date: Wed, 26 Nov 2026 09:10:00 +0100"))
    assert parsed.date == datetime(2026, 11, 26, 8, 10)
    assert parsed.date.tzinfo is None


def test_bad_date_is_none_with_a_defect() -> None:
    parsed = parse_message(message("Date: yesterday-ish, 99:99"))
    assert parsed.date is None
    assert any(d.startswith("Date not understood") for d in parsed.defects)


# -- structure ------------------------------------------------------------------------------------


def test_multipart_related_inline_image_linked_by_cid() -> None:
    related = (
        b'Content-Type: multipart/related; boundary="rel"\r\n\r\n'
        b"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p>Zrzut:</p><img src="cid:image001.png@01D9">\r\n'
        b"--rel\r\n"
        + attachment_part("inline", b"\x89PNG1", "image/png").replace(
            b"Content-Disposition: inline", b"Content-Disposition: inline\r\nContent-ID: <image001.png@01D9>"
        )
        + b"\r\n--rel--"
    )
    alternative = (
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nZrzut: [obraz]\r\n"
        b"--alt\r\n" + related + b"\r\n--alt--"
    )
    other = attachment_part('attachment; filename="raport.pdf"').replace(
        b"Content-Transfer", b"Content-ID: <unused@x>\r\nContent-Transfer"
    )
    parsed = parse_message(mixed(alternative, other))
    assert parsed.text == "Zrzut: [obraz]"  # the CRLF before a boundary belongs to the boundary
    assert parsed.html == '<p>Zrzut:</p><img src="cid:image001.png@01D9">'
    image, report = parsed.attachments
    assert (image.content_type, image.content_id, image.inline, image.content) == (
        "image/png",
        "image001.png@01D9",
        True,
        b"\x89PNG1",
    )
    assert image.filename == "image001.png"  # named by its Content-ID (issue 14)
    assert (report.filename, report.inline, report.content_id) == ("raport.pdf", False, "unused@x")


def test_html_only_message_gets_readable_text() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8",
        "<html><head><title>T</title><style>p{color:red}</style><script>alert(1)</script></head>"
        "<body><p>Dzień dobry,</p><p>strona&nbsp;nie działa.<br>Jan</p><ul><li>a</li><li>b</li></ul>"
        "</body></html>".encode(),
    )
    parsed = parse_message(raw)
    assert parsed.html is not None and parsed.html.startswith("<html>")
    assert parsed.text == "Dzień dobry,\n\nstrona nie działa.\nJan\n\n- a\n- b"
    assert "alert" not in html_to_text(parsed.html) and "color" not in parsed.text


def test_embedded_message_is_one_attachment_named_after_its_subject() -> None:
    inner = mixed(
        b"Content-Type: text/plain\r\n\r\nInner text\r\n",
        attachment_part('attachment; filename="inner.pdf"'),
        boundary="inner",
    ).replace(b"To: bok", b"Subject: Faktura 12/2026\r\nTo: bok")
    part = b"Content-Type: message/rfc822\r\n\r\n" + inner
    parsed = parse_message(mixed(TEXT_PART, part))
    assert [a.filename for a in parsed.attachments] == ["Faktura 12-2026.eml"]
    (embedded,) = parsed.attachments
    assert embedded.content_type == "message/rfc822"
    again = parse_message(embedded.content)
    assert again.subject == "Faktura 12/2026" and again.text == "Inner text\n"
    assert [a.filename for a in again.attachments] == ["inner.pdf"]


def test_missing_boundary_keeps_the_body_as_text() -> None:
    raw = message(
        'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="never-used"',
        b"Just some text, no parts at all.\r\n",
    )
    parsed = parse_message(raw)
    assert parsed.text == "Just some text, no parts at all.\n"
    assert any("boundary never found" in d for d in parsed.defects)
    assert any("StartBoundaryNotFoundDefect" in d for d in parsed.defects)


def test_unquoted_boundary_with_equals_sign_is_recovered() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=----=_NextPart_000_0093.EB75",
        b"------=_NextPart_000_0093.EB75\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
        b"------=_NextPart_000_0093.EB75\r\nContent-Type: text/html\r\n\r\n<b>Hello</b>\r\n"
        b"------=_NextPart_000_0093.EB75--\r\n",
    )
    parsed = parse_message(raw)
    assert parsed.text == "Hello" and parsed.html == "<b>Hello</b>"
    assert any("recovered" in d for d in parsed.defects)


def test_missing_boundary_in_corpus() -> None:
    parsed = parse_message(corpus_file("mimekit/messages/empty-multipart.txt"))
    assert parsed.text.startswith("This part should be on the same level")


def test_damaged_base64_is_decoded_best_effort() -> None:
    part = (
        b'Content-Type: application/pdf; name="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.b64encode(b"hello world!")[:-1]
    )
    parsed = parse_message(mixed(TEXT_PART, part))
    assert parsed.attachments[0].content.startswith(b"hello world")
    assert any("damaged base64" in d for d in parsed.defects)


def test_tolerant_transfer_encoding_names() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted printable;",
        b"Dzi=C4=99kuj=C4=99\r\n",
    )
    assert parse_message(raw).text == "Dziękuję\n"


def test_format_flowed_is_unwrapped() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8; format=flowed",
        b"To jest jedna \r\nd\xc5\x82uga linia.\r\n>> cytat \r\n>> dalej\r\n-- \r\nJan\r\n",
    )
    assert parse_message(raw).text == "To jest jedna długa linia.\n>> cytat dalej\n-- \nJan\n"


def test_uuencoded_part() -> None:
    import binascii

    encoded = b"begin 644 notes.txt\r\n" + binascii.b2a_uu(b"uuencoded data") + b"`\r\nend\r\n"
    part = b'Content-Type: text/plain; name="notes.txt"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n' + encoded
    parsed = parse_message(mixed(TEXT_PART, part))
    assert (parsed.attachments[0].filename, parsed.attachments[0].content) == ("notes.txt", b"uuencoded data")


# -- winmail.dat ------------------------------------------------------------------------------------


def test_winmail_dat_is_unpacked() -> None:
    tnef = corpus_file("mimekit/tnef/two-files.tnef")
    part = attachment_part('attachment; filename="winmail.dat"', tnef, "application/ms-tnef")
    parsed = parse_message(mixed(TEXT_PART, part))
    assert [a.filename for a in parsed.attachments] == ["AUTHORS", "README"]
    assert parsed.attachments[0].size == 244


def test_unreadable_winmail_dat_is_kept() -> None:
    part = attachment_part('attachment; filename="winmail.dat"', b"not tnef at all", "application/ms-tnef")
    parsed = parse_message(mixed(TEXT_PART, part))
    assert [(a.filename, a.content) for a in parsed.attachments] == [("winmail.dat", b"not tnef at all")]
    assert any("winmail.dat not unpackable" in d for d in parsed.defects)


# -- delivery status notifications ---------------------------------------------------------------


def test_dsn_single_recipient() -> None:
    parsed = parse_message(corpus_file("mikel-mail/multipart_report_emails/report_530.eml"))
    report = parsed.delivery_report
    assert report is not None
    assert report.recipients == ("edwin@zzzzzzz.com",)
    assert (report.action, report.status) == ("failed", "5.3.0")
    assert report.diagnostic == "553 5.3.0 <edwin@zzzzzzz.com>... Unknown E-Mail Address"
    assert report.original_message_id == "200712232303.lBNN3jDq002941@mail12.rrrr.com.au"  # text/rfc822-headers


def test_dsn_several_recipients_and_returned_message() -> None:
    parsed = parse_message(corpus_file("mikel-mail/multipart_report_emails/multi_address_bounce1.eml"))
    report = parsed.delivery_report
    assert report is not None
    assert len(report.recipients) == 5 and report.recipients[0] == "bbbbvhvbbvkjbhfbvbvjhb@gmail.com"
    assert (report.action, report.status) == ("failed", "5.1.1")
    assert report.diagnostic.startswith("550-5.1.1 The email account that you tried to reach does not exist.")
    assert report.original_message_id == "118707422.15521266992174819.JavaMail.root@lvmail01"


def test_dsn_delayed() -> None:
    report = parse_message(corpus_file("mikel-mail/multipart_report_emails/report_422.eml")).delivery_report
    assert report is not None and (report.action, report.status) == ("delayed", "4.2.2")


def test_dsn_with_base64_recipient_block() -> None:
    report = parse_message(corpus_file("mimekit/messages/bounce.txt")).delivery_report
    assert report is not None
    assert report.recipients == ("netec.test@netecgc.com",)
    assert (report.action, report.status) == ("failed", "5.1.1")
    assert report.original_message_id is not None and report.original_message_id.startswith("44565655.")


def test_dsn_with_group_to_header() -> None:
    report = parse_message(corpus_file("mimekit/messages/delivery-status.txt")).delivery_report
    assert report is not None
    assert report.recipients == ("newsletter-request@imusic.com",)
    assert report.action == "failed"
    assert report.diagnostic == "500 (err.nosuchuser)"


def test_not_a_dsn() -> None:
    assert parse_message(message("Subject: x")).delivery_report is None
    assert parse_message(corpus_file("mimekit/messages/disposition-notification.txt")).delivery_report is None


# -- never raise ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage \x80\x81",
        b"Subject: only headers",
        b"\r\n\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!",
        b"Content-Type: text/plain; charset=base64\r\n\r\nabc",
        b'Content-Type: text/plain; charset="\x00"\r\n\r\nabc',
        b"From: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
def test_never_raises(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.message_id


def test_deep_nesting_does_not_raise() -> None:
    body = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for level in range(300):
        boundary = f"b{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    parsed = parse_message(b"Subject: deep\r\n" + body)
    assert isinstance(parsed, ParsedMessage)


def test_truncated_messages_never_raise() -> None:
    raw = corpus_file("mikel-mail/multipart_report_emails/multi_address_bounce1.eml")
    for cut in range(0, len(raw), max(1, len(raw) // 97)):
        assert isinstance(parse_message(raw[:cut]), ParsedMessage)


def test_base64_encoded_embedded_message_is_decoded() -> None:
    inner = b"From: x@example.pl\r\nSubject: =?utf-8?q?Wewn=C4=99trzna?=\r\n\r\nTre\xc5\x9b\xc4\x87\r\n"
    part = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(inner)
    parsed = parse_message(mixed(TEXT_PART, part))
    assert [(a.filename, a.content) for a in parsed.attachments] == [("Wewnętrzna.eml", inner)]


def test_content_location_does_not_turn_a_body_into_an_attachment() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nContent-Location: http://example.pl/index.html",
        b"<p>Strona</p>",
    )
    parsed = parse_message(raw)
    assert (parsed.html, parsed.text, parsed.attachments) == ("<p>Strona</p>", "Strona", ())


def _tnef_stream(*objects: tuple[int, int, bytes]) -> bytes:
    """A TNEF stream from (level, attribute id, data) objects; checksums left zero."""
    body = b"".join(struct.pack("<BHHI", level, name, 6, len(data)) + data + b"\0\0" for level, name, data in objects)
    return struct.pack("<IH", 0x223E9F78, 0) + body


@pytest.mark.parametrize(
    "tnef",
    [
        # A MAPI property count of four billion with no data behind it (tnefparse alone loops for hours).
        _tnef_stream((1, 0x9003, struct.pack("<I", 0xFFFFFFFF))),
        # A multi-value count of four billion, with and without bytes to "read".
        _tnef_stream((1, 0x9003, struct.pack("<IHHI", 1, 0x1002, 1, 0xFFFFFFFF))),
        _tnef_stream((1, 0x9003, struct.pack("<IHHI", 1, 0x1002, 1, 0xFFFFFFFF) + bytes(1_000_000))),
        # Hundreds of thousands of empty attributes: tnefparse copies the rest of the stream for each.
        _tnef_stream(*[(1, 0x8000, b"")] * 200_000),
    ],
    ids=["property-count", "multi-value-count", "multi-value-with-data", "many-attributes"],
)
def test_hostile_winmail_dat_is_bounded(tnef: bytes) -> None:
    # How long it takes is `make bench`'s business; here: it ends, and the file is kept as it came.
    part = attachment_part('attachment; filename="winmail.dat"', tnef, "application/ms-tnef")
    parsed = parse_message(mixed(TEXT_PART, part))
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert parsed.attachments[0].content == tnef
    assert any("winmail.dat" in d for d in parsed.defects)
