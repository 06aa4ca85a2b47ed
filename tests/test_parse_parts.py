"""Parts as the mail names and sends them (issue 14, classes 4 and 5, and the extras): attached
messages byte-exact, names from Content-Type, Content-Description, Content-ID and a DSN's layout,
uuencoded files, S/MIME and PGP signatures. Every message is built here."""

from __future__ import annotations

import base64
import binascii

from gateway.parse import parse_message

# An attached message written the way no serialiser would write it again: folded headers with
# tabs, odd spacing, lower-case names, LF-only lines inside a CRLF message, trailing blanks.
FORWARDED = (
    b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
    b"\tby mail.example.pl; Mon, 30 Nov 2026 10:00:00 +0100\r\n"
    b"from:   Anna   Kowalska <anna@example.org>\r\n"
    b"subject: =?utf-8?q?Zam=C3=B3wienie?=\r\n"
    b"  nr 7\r\n"
    b"Message-ID:<orig@example.org>\n"
    b"Content-Type: text/plain;\r\n"
    b"\tcharset=utf-8\r\n"
    b"\r\n"
    b"Tre\xc5\x9b\xc4\x87 zam\xc3\xb3wienia.   \r\n"
    b"\r\n"
)


def test_forwarded_message_is_stored_as_the_bytes_that_were_sent() -> None:
    raw = (
        b"From: Jan <jan@example.pl>\r\nTo: bok@example.test\r\nSubject: Fwd: zamowienie\r\n"
        b'Message-ID: <fwd@example.pl>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="f"\r\n\r\n'
        b"--f\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPrzesy\xc5\x82am.\r\n"
        b"--f\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + FORWARDED + b"\r\n--f--\r\n"
    )
    parsed = parse_message(raw)
    [attached] = parsed.attachments
    assert attached.content == FORWARDED
    assert attached.filename == "Zamówienie nr 7.eml"
    assert attached.content_type == "message/rfc822"


def dsn(*, descriptions: bool) -> bytes:
    def described(text: str) -> bytes:
        return f"Content-Description: {text}\r\n".encode() if descriptions else b""

    return (
        b"From: MAILER-DAEMON@mx.example.test (Mail Delivery System)\r\nTo: bounce@example.test\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn@mx.example.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
        b"--r\r\n" + described("Notification") + b"Content-Type: text/plain\r\n\r\nI'm sorry to have to inform you.\r\n"
        b"--r\r\n" + described("Delivery report") + b"Content-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.test\r\n\r\n"
        b"Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
        b"--r\r\n" + described("Undelivered Message") + b"Content-Type: message/rfc822\r\n\r\n" + FORWARDED + b"\r\n"
        b"--r--\r\n"
    )


def test_dsn_parts_are_named_and_the_returned_message_is_byte_exact() -> None:
    for descriptions in (True, False):  # Postfix says what the parts are; other MTAs do not
        parsed = parse_message(dsn(descriptions=descriptions))
        assert parsed.text == "I'm sorry to have to inform you."
        report, returned = parsed.attachments
        assert (report.filename, report.content_type) == ("Delivery report.txt", "message/delivery-status")
        assert report.content.startswith(b"Reporting-MTA: dns; mx.example.test\r\n\r\nFinal-Recipient:")
        assert (returned.filename, returned.content_type) == ("Undelivered Message.eml", "message/rfc822")
        assert returned.content == FORWARDED
        assert parsed.delivery_report is not None
        assert parsed.delivery_report.original_message_id == "orig@example.org"
        assert parsed.delivery_report.recipients == ("nobody@example.org",)


def test_base64_encoded_attached_message_is_decoded_from_the_bytes_sent() -> None:
    raw = (
        b'From: jan@example.pl\r\nSubject: b64\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="f"\r\n\r\n'
        b"--f\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--f\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(FORWARDED).replace(b"\n", b"\r\n")
        + b"--f--\r\n"
    )
    [attached] = parse_message(raw).attachments
    assert attached.content == FORWARDED


def part(headers: str, body: bytes = b"data") -> bytes:
    return headers.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def mixed(*parts: bytes) -> bytes:
    body = b"".join(b"--p\r\n" + p + b"\r\n" for p in parts) + b"--p--\r\n"
    return (
        b"From: Jan <jan@example.pl>\r\nTo: bok@example.test\r\nSubject: Pliki\r\nMessage-ID: <n@example.pl>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n'
        b"--p\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nW za\xc5\x82\xc4\x85czeniu.\r\n" + body
    )


def test_parts_without_filename_are_named_as_the_mail_names_them() -> None:
    parsed = parse_message(
        mixed(
            part('Content-Type: application/pdf; name="faktura 11-2026.pdf"'),
            part("Content-Type: application/pdf\nContent-Description: umowa.pdf"),
            part("Content-Type: application/vnd.ms-excel\nContent-Description: Cennik uslug"),
            part("Content-Type: image/jpeg\nContent-Disposition: inline\nContent-ID: <image001.jpg@01DA1234.5678ABCD>"),
            part("Content-Type: application/octet-stream\nContent-ID: <part1.06090408.01060107@example.pl>"),
            part("Content-Type: text/plain\nContent-Description: =?utf-8?q?Notatka_z_rozmowy?="),
        )
    )
    assert [a.filename for a in parsed.attachments] == [
        "faktura 11-2026.pdf",
        "umowa.pdf",
        "Cennik uslug.xls",
        "image001.jpg",
        "attachment-5.bin",
        "Notatka z rozmowy.txt",
    ]
    assert all(a.content == b"data" for a in parsed.attachments)


# -- extras -------------------------------------------------------------------------------------------


def test_uuencoded_file_in_a_text_body_becomes_an_attachment() -> None:
    data = bytes(range(256)) * 3
    encoded = "".join(binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45))
    body = f"Przesyłam raport:\n\nbegin 644 raport.pdf\n{encoded}`\nend\n\nPozdrawiam\n".replace("\n", "\r\n")
    raw = b"From: jan@example.pl\r\nTo: bok@example.test\r\nSubject: uu\r\n\r\n" + body.encode()
    parsed = parse_message(raw)
    assert parsed.text == "Przesyłam raport:\n\n\nPozdrawiam\n"
    assert [(a.filename, a.content_type, a.content) for a in parsed.attachments] == [
        ("raport.pdf", "application/pdf", data)
    ]


def test_text_that_only_looks_like_uuencode_stays_text() -> None:
    body = b"Plan:\r\nbegin 644 not really\r\nthis line is far too long to be uuencoded data and has spaces in it ok\r\nend\r\n"
    parsed = parse_message(b"From: jan@example.pl\r\nSubject: x\r\n\r\n" + body)
    assert parsed.attachments == ()
    assert "begin 644 not really" in parsed.text


SIGNATURE = b"0\x82\x05\x00\x06\t*\x86H\x86\xf7\r\x01\x07\x02\xa0"


def test_smime_signed_mail_shows_its_text_and_keeps_the_signature() -> None:
    raw = (
        b"From: Jan <jan@example.pl>\r\nTo: bok@example.test\r\nSubject: Podpisany\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="s"\r\n\r\n'
        b"This is an S/MIME signed message\r\n"
        b"--s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nTre\xc5\x9b\xc4\x87 podpisana.\r\n"
        b'--s\r\nContent-Type: application/pkcs7-signature; name="smime.p7s"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
        + base64.encodebytes(SIGNATURE).replace(b"\n", b"\r\n")
        + b"--s--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "Treść podpisana."
    assert [(a.filename, a.content_type, a.content) for a in parsed.attachments] == [
        ("smime.p7s", "application/pkcs7-signature", SIGNATURE)
    ]


def test_inline_pgp_block_is_left_intact() -> None:
    signed = (
        "-----BEGIN PGP SIGNED MESSAGE-----\n"
        "Hash: SHA256\n"
        "\n"
        "- -- \n"
        "Proszę o fakturę.\n"
        "-----BEGIN PGP SIGNATURE-----\n"
        "\n"
        "iQEzBAEBCAAdFiEE7mP+QX0XkZJf0tS9p3c=\n"
        "=abcd\n"
        "-----END PGP SIGNATURE-----\n"
    )
    raw = (
        b"From: jan@example.pl\r\nSubject: pgp\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + signed.replace("\n", "\r\n").encode()
    )
    parsed = parse_message(raw)
    assert parsed.text == signed
    assert parsed.attachments == ()


def test_each_header_value_is_parsed_once_and_the_cache_stays_bounded() -> None:
    """gateway.parse.parts.POLICY parses a header value once for every read (issue 13: the email
    package re-parsed Content-Type on each access); a stranger's mail cannot grow the cache."""
    from gateway.parse import parts

    first = parts.POLICY.header_fetch_parse("Content-Type", 'text/plain; charset="utf-8"')
    again = parts.POLICY.header_fetch_parse("Content-Type", 'text/plain; charset="utf-8"')
    assert first is again and first.params["charset"] == "utf-8"
    assert parts.POLICY.header_fetch_parse("content-type", 'text/plain; charset="utf-8"').name == "content-type"
    for index in range(5000):
        parts.POLICY.header_fetch_parse("X-Junk", f"value {index}")
    assert 0 < parts.PARSED_HEADERS.chars <= parts.CACHED_TOTAL_CHARS
    long_value = "x" * (parts.CACHED_VALUE_CHARS + 1)
    parts.POLICY.header_fetch_parse("Subject", long_value)
    assert ("Subject", long_value) not in parts.PARSED_HEADERS


def test_read_header_builds_each_short_value_once_and_the_cache_stays_bounded() -> None:
    """gateway.parse.headers keeps the header object of a short value (the same To, MIME-Version
    and Content-Type arrive in message after message): one parse serves them all, the result is
    the policy's own, and neither a stream of distinct values nor a long one grows the cache."""
    from email.policy import default

    from gateway.parse import headers, parts

    defects: list[str] = []
    first = headers.read_header("To", "Biuro =?utf-8?q?Obs=C5=82ugi?= <bok@example.test>", defects)
    again = headers.read_header("To", "Biuro =?utf-8?q?Obs=C5=82ugi?= <bok@example.test>", defects)
    assert first.obj is again.obj and first == again
    reference = default.header_factory("to", "Biuro =?utf-8?q?Obs=C5=82ugi?= <bok@example.test>")
    assert str(first.obj) == str(reference) == "Biuro Obsługi <bok@example.test>"
    assert first.obj.addresses == reference.addresses  # type: ignore[attr-defined]
    # A value the policy finds defects in reports them on every read, not only the first.
    for _ in range(2):
        found: list[str] = []
        headers.read_header("From", "jan@", found)
        assert found, "the defects of a cached header are reported again"
    for index in range(5000):
        headers.read_header("X-Junk", f"value {index}", defects)
    assert 0 < headers.HEADER_OBJECTS.chars <= parts.CACHED_TOTAL_CHARS
    long_value = "x" * (parts.CACHED_VALUE_CHARS + 1)
    headers.read_header("Subject", long_value, defects)
    assert ("subject", long_value) not in headers.HEADER_OBJECTS


def test_the_header_caches_stay_small_whatever_the_headers() -> None:
    """A parsed header keeps its parse tree (hundreds of bytes per character): a stream of distinct
    address lists just under the length limit, the worst a sender can do, must not make either
    cache hold more than a few megabytes. (Bounded by entries, 4 096 such values took 865 MB.)"""
    import tracemalloc

    from gateway.parse import headers, parts

    def worst(index: int) -> str:
        addresses = f'"N {index}" <a.{index}@example.pl>'
        for n in range(100):
            longer = f'{addresses}, "N {index} {n}" <a{n}.{index}@example{n}.pl>'
            if len(longer) > parts.CACHED_VALUE_CHARS:
                return addresses
            addresses = longer
        return addresses

    defects: list[str] = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for index in range(2 * parts.CACHED_TOTAL_CHARS // parts.CACHED_VALUE_CHARS):
            headers.read_header("To", worst(index), defects)
            parts.POLICY.header_fetch_parse("Cc", worst(index))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert held < 40 * 1024 * 1024, f"{held / 1024 / 1024:.1f} MB"
    print(f"header caches: {held / 1024 / 1024:.1f} MB held")
    assert headers.HEADER_OBJECTS.chars <= parts.CACHED_TOTAL_CHARS


def test_the_header_registry_makes_each_class_once_and_builds_what_the_stdlib_does() -> None:
    """parts.POLICY's header_factory keeps one class per registered header class (the stdlib
    registry made a new one for every header); headers it builds are the stdlib's in all else."""
    from email.policy import default

    from gateway.parse import parts

    factory = parts.POLICY.header_factory
    assert factory["Subject"] is factory["subject"] is factory["SUBJECT"]
    assert factory["X-Anything"] is factory["X-Else"]  # unknown names: the default class, once
    assert factory["From"] is not factory["Subject"]
    for name, value in [
        ("From", '"Kowalski, Jan" <jan@example.pl>, ewa@example.pl'),
        ("Date", "Mon, 02 Mar 2026 08:01:00 +0100"),
        ("Content-Type", 'multipart/mixed; boundary="b1"'),
        ("Subject", "=?utf-8?b?WmHFvMOzxYLEhw==?= gęślą"),
        ("Message-ID", "<a@b>"),
    ]:
        ours, theirs = factory(name, value), default.header_factory(name, value)
        assert str(ours) == str(theirs) and type(ours).__mro__[1:] == type(theirs).__mro__[1:]
        assert [str(d) for d in ours.defects] == [str(d) for d in theirs.defects]
