"""Every guess and every dropped byte is a recorded defect (SPEC §5, §11): base64 read past its
padding, undeclared 8-bit text, short KOI8-R and Windows-1251 text charset detection misreads as
Shift_JIS or Big5, and the last resort for bytes the email package cannot parse at all."""

from __future__ import annotations

import base64

import pytest

from gateway.parse import ParsedMessage, parse_message


def message(headers: bytes, body: bytes) -> bytes:
    return (
        b"From: Jan Nowak <jan.nowak@example.pl>\r\nTo: bok@example.test\r\nMessage-ID: <g@example.pl>\r\n"
        + headers
        + b"\r\n"
        + body
    )


BASE64_TEXT = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"


# -- base64 --------------------------------------------------------------------------------------


def test_junk_after_base64_padding_is_dropped_and_recorded() -> None:
    body = base64.b64encode("Dzień dobry, ".encode()) + b"!!!@@@ nie base64 ***\r\n"  # ends in "=="
    parsed = parse_message(message(BASE64_TEXT, body))
    assert parsed.text == "Dzień dobry, "
    assert parsed.defects == ("text/plain: 18 characters after the base64 padding are not base64; dropped",)


def test_base64_concatenated_after_padding_is_decoded_on_and_recorded() -> None:
    body = base64.b64encode("Dzień dobry, ".encode()) + b"\r\n" + base64.b64encode("proszę o fakturę.".encode())
    parsed = parse_message(message(BASE64_TEXT, body + b"\r\n"))
    assert parsed.text == "Dzień dobry, proszę o fakturę."
    assert parsed.defects == ("text/plain: base64 continues after its padding (concatenated encodings); decoded on",)


def test_stray_characters_inside_base64_are_skipped_and_recorded() -> None:
    encoded = base64.b64encode("Dzień dobry".encode())
    parsed = parse_message(message(BASE64_TEXT, encoded[:4] + b"*" + encoded[4:] + b"\r\n"))
    assert parsed.text == "Dzień dobry"
    assert parsed.defects == ("text/plain: 1 characters outside the base64 alphabet skipped",)


def test_clean_base64_in_lines_records_nothing() -> None:
    content = bytes(range(256)) * 300
    raw = message(
        b'MIME-Version: 1.0\r\nContent-Type: application/octet-stream; name="dane.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n",
        base64.encodebytes(content).replace(b"\n", b"\r\n"),
    )
    parsed = parse_message(raw)
    assert [a.content for a in parsed.attachments] == [content]
    assert parsed.defects == ()


# -- undeclared 8-bit text -----------------------------------------------------------------------


def test_undeclared_8bit_header_guess_is_recorded() -> None:
    raw = message(
        "Subject: Faktura za usługę, ścisła kontrola\r\n".encode("iso-8859-2"),  # ś differs from Windows-1250
        b"Prosze o fakture.\r\n",
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Faktura za usługę, ścisła kontrola"
    assert parsed.defects == ("8-bit header text without a declared charset read as iso8859-2",)


def test_raw_utf8_header_is_no_guess() -> None:
    parsed = parse_message(message("Subject: Faktura za usługę\r\n".encode(), b"Tekst.\r\n"))
    assert parsed.subject == "Faktura za usługę"
    assert parsed.defects == ()


def test_undeclared_8bit_body_guess_is_recorded() -> None:
    raw = message(b"MIME-Version: 1.0\r\n", "Zażółć gęślą jaźń.\r\n".encode("cp1250"))
    parsed = parse_message(raw)
    assert parsed.text == "Zażółć gęślą jaźń.\n"
    assert parsed.defects == ("text/plain: 8-bit text without a known charset read as cp1250",)


# -- short Cyrillic text -------------------------------------------------------------------------

RUSSIAN = ["Привет", "Вопрос", "Договор", "Не работает почта", "Заказ 123", "Счёт", "Срочно", "нет", "Спасибо!"]


@pytest.mark.parametrize("codec", ["koi8-r", "cp1251"])
@pytest.mark.parametrize("text", RUSSIAN)
def test_short_undeclared_cyrillic_subject_is_not_read_as_cjk(codec: str, text: str) -> None:
    # charset-normalizer alone reads these as Big5, CP949 or Shift_JIS (half-width katakana).
    raw = message(b"Subject: " + text.encode(codec) + b"\r\n", b"Hello\r\n")
    parsed = parse_message(raw)
    assert parsed.subject == text
    assert parsed.defects == (f"8-bit header text without a declared charset read as {codec}",)


@pytest.mark.parametrize("codec", ["iso-8859-2", "cp1250"])
@pytest.mark.parametrize("text", ["Żółć", "żółć", "ŻÓŁĆ", "Łódź", "gęś", "Śląsk", "już", "są", "Re: źle", "ósmy"])
def test_short_undeclared_polish_subject_stays_polish(codec: str, text: str) -> None:
    # The customers' charsets come first: a short Polish word must not turn Cyrillic.
    raw = message(b"Subject: " + text.encode(codec) + b"\r\n", b"Hello\r\n")
    assert parse_message(raw).subject == text


def test_short_undeclared_koi8r_body() -> None:
    raw = message(b"MIME-Version: 1.0\r\n", "Добрый день, помогите.\r\n".encode("koi8-r"))
    assert parse_message(raw).text == "Добрый день, помогите.\n"


@pytest.mark.parametrize(
    ("text", "codec"),
    [
        ("謝謝", "big5"),
        ("發票", "big5"),
        ("こんにちは", "shift_jis"),
        ("お問い合わせ", "shift_jis"),
        ("감사합니다", "euc-kr"),
    ],
)
def test_short_cjk_the_detector_reads_right_stays_cjk(text: str, codec: str) -> None:
    raw = message(b"Subject: " + text.encode(codec) + b"\r\n", b"Hello\r\n")
    assert parse_message(raw).subject == text


# -- the last resort -----------------------------------------------------------------------------

# Python's header parser raises IndexError on a Content-Type parameter that ends in "*" with no
# value (email._header_value_parser.get_parameter, Python 3.11); the feed parser reads Content-Type
# while splitting the message, so the whole parse fails and only the last resort is left.
UNPARSEABLE = (
    b"From: Jan Nowak <jan.nowak@example.pl>\r\nSubject: =?utf-8?q?Faktura_za_us=C5=82ug=C4=99?=\r\n"
    b"Message-ID: <salvage@example.pl>\r\nIn-Reply-To: <parent@example.test>\r\n"
    b"Content-Type: ;filename*\r\n\r\nProsze o fakture.\r\n"
)


def last_resort(raw: bytes, envelope_sender: str | None) -> ParsedMessage:
    parsed = parse_message(raw, envelope_sender=envelope_sender)
    if not parsed.defects[0].startswith("message not parseable"):
        pytest.skip("this Python parses the message: the last resort is not reached by this input")
    return parsed


def test_unparseable_message_keeps_its_text_and_its_header_fields() -> None:
    parsed = last_resort(UNPARSEABLE, "bounces@example.pl")
    assert parsed.defects[0] == "message not parseable: IndexError: string index out of range"
    assert (parsed.from_address, parsed.from_name, parsed.requester_source) == (
        "jan.nowak@example.pl",
        "Jan Nowak",
        "from",
    )
    assert parsed.subject == "Faktura za usługę"
    assert (parsed.message_id, parsed.in_reply_to) == ("salvage@example.pl", ("parent@example.test",))
    assert "Prosze o fakture." in parsed.text and "Content-Type: ;filename*" in parsed.text


def test_unparseable_message_without_a_usable_from_is_the_envelope_senders() -> None:
    raw = UNPARSEABLE.replace(b"Jan Nowak <jan.nowak@example.pl>", b"Serwis <>")
    parsed = last_resort(raw, "Jan.Nowak@Example.PL")
    assert (parsed.from_address, parsed.requester_source) == ("jan.nowak@example.pl", "envelope")
    assert parsed.subject == "Faktura za usługę"


def test_unparseable_message_without_any_sender_has_no_requester() -> None:
    parsed = last_resort(UNPARSEABLE.replace(b"Jan Nowak <jan.nowak@example.pl>", b"Serwis <>"), None)
    assert (parsed.from_address, parsed.requester_source) == ("", "")
    assert "requester: no usable sender address anywhere" in parsed.defects


def test_undeclared_8bit_file_name_in_a_part_is_read_and_recorded() -> None:
    raw = message(
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
        b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nFaktura w zalaczniku.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="' + "Faktura_świąteczna.pdf".encode("iso-8859-2") + b'"\r\n'
        b"\r\nJVBERi0xLjQK\r\n--b--\r\n",
    )
    parsed = parse_message(raw)
    assert [a.filename for a in parsed.attachments] == ["Faktura_świąteczna.pdf"]
    assert parsed.defects == ("application/pdf: 8-bit header text without a declared charset read as iso8859-2",)
