"""MIME budgets (issue 12 item 3): past a budget the message is still read with its headers (From,
Subject, Message-ID), its text as far as read, and the parts not unpacked recorded as refused with
the reason. Each abuse case on parse_message, where the parser alone is the claim; the deepest one
also through the real SMTP listener. Bounds are structural or in bytes, never in seconds."""

from __future__ import annotations

import base64
import itertools
import struct
import tracemalloc
from collections.abc import Callable

from gateway.app import Gateway
from gateway.parse import ParseBudget, ParsedMessage, parse_message
from gateway.parse.tnef import _RTF_PRESET
from tests.helpers import all_cases, make_mail, send, sent_to, settle

HEAD = b"From: Jan Nowak <jan@example.pl>\r\nTo: bok@example.test\r\nSubject: Budzet\r\nMessage-ID: <budget@example.pl>\r\n"


def nested(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return HEAD + b"MIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nGleboko\r\n" + closing


def many_parts(count: int) -> bytes:
    parts = b"".join(b"--p\r\nContent-Type: application/octet-stream\r\n\r\nx%d\r\n" % i for i in range(count))
    return (
        HEAD
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n'
        + b"--p\r\nContent-Type: text/plain\r\n\r\nTekst na poczatku\r\n"
        + parts
        + b"--p--\r\n"
    )


def assert_headers_kept(parsed: ParsedMessage) -> None:
    assert (parsed.from_address, parsed.from_name) == ("jan@example.pl", "Jan Nowak")
    assert (parsed.subject, parsed.message_id) == ("Budzet", "budget@example.pl")


def refused(parsed: ParsedMessage) -> list[tuple[str, str | None]]:
    return [(a.filename, a.refused_reason) for a in parsed.attachments if a.refused_reason is not None]


def peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_thousand_nested_multiparts_keep_from_and_subject() -> None:
    parsed = parse_message(nested(1000))
    assert_headers_kept(parsed)
    reason = "1 MIME part not unpacked: MIME parts nested deeper than 50 levels"
    assert refused(parsed) == [("parts-not-unpacked", reason)]
    assert reason in parsed.defects
    assert not any("RecursionError" in d for d in parsed.defects)


def test_nesting_within_the_budget_is_unpacked() -> None:
    parsed = parse_message(nested(40))
    assert parsed.text == "Gleboko\n"
    assert refused(parsed) == []


def test_twenty_thousand_tiny_parts_stop_at_the_part_budget() -> None:
    raw = many_parts(20_000)
    parsed = parse_message(raw)
    assert_headers_kept(parsed)
    assert parsed.text == "Tekst na poczatku"
    unpacked = [a for a in parsed.attachments if a.refused_reason is None]
    assert 0 < len(unpacked) <= 500
    assert [a.content for a in unpacked[:2]] == [b"x0", b"x1"]
    [(name, reason)] = refused(parsed)
    assert name == "parts-not-unpacked"
    assert reason is not None and reason.endswith("more than 500 MIME parts")
    assert any(d.startswith("more than 500 MIME parts: the last ") for d in parsed.defects)
    assert peak_bytes(lambda: parse_message(raw)) < 4 * len(raw) + (4 << 20)


def test_a_smaller_part_budget_is_honoured() -> None:
    parsed = parse_message(many_parts(50), budget=ParseBudget(max_parts=10))
    unpacked = [a for a in parsed.attachments if a.refused_reason is None]
    assert [a.content for a in unpacked] == [b"x%d" % i for i in range(8)]  # root + text + 8 = 10 parts
    assert refused(parsed)[0][1] == "42 MIME parts not unpacked: more than 10 MIME parts"


def test_half_a_million_headers_keep_the_ones_that_matter() -> None:
    noise = b"".join(b"X-Noise-%d: v\r\n" % i for i in range(500_000))
    raw = b"Received: from x\r\n" + noise + HEAD + b"\r\nTresc\r\n"  # the key fields come last
    parsed = parse_message(raw)
    assert_headers_kept(parsed)
    assert parsed.text == "Tresc\n"
    assert len(parsed.headers) <= 2000 + 10
    assert len(parsed.defects) <= 200
    assert "498001 header fields not read: over the budget of 2000 fields or 1048576 bytes per part" in parsed.defects
    assert peak_bytes(lambda: parse_message(raw)) < 8 * len(raw) + (4 << 20)


def test_header_bytes_budget() -> None:
    big = b"".join(b"X-Big-%d: " % i + b"a" * 20_000 + b"\r\n" for i in range(100))  # 2 MB of header
    parsed = parse_message(big + HEAD + b"\r\nTresc\r\n")
    assert_headers_kept(parsed)
    assert sum(len(value) for _, value in parsed.headers) <= (1 << 20) + 4096
    assert any(d.endswith("1048576 bytes per part") for d in parsed.defects)


def test_defect_list_is_bounded_and_says_how_many_more() -> None:
    # Each name holds a byte UTF-8 cannot read: one distinct defect per part.
    parts = b"".join(
        b"--p\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''plik%d%%FF.bin\r\n\r\nx\r\n" % i
        for i in range(300)
    )
    raw = HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + b"--p--\r\n"
    parsed = parse_message(raw, budget=ParseBudget(max_defects=50))
    assert len(parsed.attachments) == 300
    assert len(parsed.defects) == 50
    assert parsed.defects[-1] == "251 more defects not listed"


# -- winmail.dat that expands ------------------------------------------------------------------------


def lzfu_bomb(raw_size: int) -> bytes:
    """Compressed RTF made only of back-references: 2 bytes in, 17 bytes out, for raw_size bytes."""
    write, body, produced = len(_RTF_PRESET), bytearray(), 0
    while produced < raw_size:
        body.append(0xFF)  # eight references follow
        for _ in range(8):
            body += struct.pack(">H", (((write + 2048) & 0xFFF) << 4) | 0xF)  # never the write head (the end)
            write, produced = (write + 17) & 0xFFF, produced + 17
    return struct.pack("<IIII", len(body) + 12, raw_size, 0x75465A4C, 0) + bytes(body)


def winmail_with_rtf(compressed: bytes) -> bytes:
    prop = struct.pack("<HHII", 0x0102, 0x1009, 1, len(compressed)) + compressed + b"\0" * (-len(compressed) % 4)
    data = struct.pack("<I", 1) + prop  # attMAPIProps: one PR_RTF_COMPRESSED
    tnef = struct.pack("<IH", 0x223E9F78, 0) + struct.pack("<BHHI", 1, 0x9003, 6, len(data)) + data + b"\0\0"
    return (
        HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="t"\r\n\r\n'
        b"--t\r\nContent-Type: text/plain\r\n\r\nW zalaczniku.\r\n"
        b'--t\r\nContent-Type: application/ms-tnef; name="winmail.dat"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(tnef).replace(b"\n", b"\r\n")
        + b"--t--\r\n"
    )


def test_tnef_bomb_stops_at_its_output_budget() -> None:
    raw = winmail_with_rtf(lzfu_bomb(4 << 20))  # 0.5 MB that decompresses to 4 MiB
    within = parse_message(raw)
    assert [(a.filename, a.size) for a in within.attachments] == [("body.rtf", 4 << 20)]
    bounded = parse_message(raw, budget=ParseBudget(max_container_output_bytes=1 << 20))
    assert_headers_kept(bounded)
    assert bounded.text == "W zalaczniku."
    assert [a.filename for a in bounded.attachments] == ["body.rtf.lzfu"]  # kept compressed, as it came
    assert bounded.attachments[0].size < 1 << 20
    assert any("RTF claims 4194304 bytes, more than we decompress" in d for d in bounded.defects)


# -- processing time --------------------------------------------------------------------------------


def test_processing_time_budget_leaves_the_rest_not_unpacked() -> None:
    ticks = itertools.count()
    budget = ParseBudget(max_processing_seconds=5, clock=lambda: float(next(ticks)))  # 1 s per look
    parsed = parse_message(many_parts(20), budget=budget)
    assert_headers_kept(parsed)
    assert parsed.text == "Tekst na poczatku"
    unpacked = [a for a in parsed.attachments if a.refused_reason is None]
    [(_, reason)] = refused(parsed)
    assert 0 < len(unpacked) < 20
    assert reason == f"{20 - len(unpacked)} MIME parts not unpacked: processing time budget of 5 s used up"


# -- through the real SMTP listener -------------------------------------------------------------------


async def test_deeply_nested_message_over_smtp_becomes_a_case_with_its_sender_and_subject(gateway, settings):
    code, _ = await send(settings, nested(1000), mail_from="jan@example.pl")
    assert code == 250
    await settle(gateway)
    [case] = all_cases(gateway)
    assert (case["requester"], case["subject"]) == ("jan@example.pl", "Budzet")
    assert case["messages"][0]["message_id"] == "budget@example.pl"


def test_a_multipart_recovered_from_a_broken_boundary_is_unpacked_within_the_budgets_too() -> None:
    inner = nested(1000).split(b"MIME-Version: 1.0\r\n", 1)[1]  # the nested parts, without our head
    boundary = b"----=_NextPart_000_0093.EB75"  # unquoted with "=": the email package cuts it short
    raw = (
        HEAD
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="
        + boundary
        + b"\r\n\r\n--"
        + boundary
        + b"\r\nContent-Type: text/plain\r\n\r\nNa wierzchu\r\n--"
        + boundary
        + b"\r\n"
        + inner
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    parsed = parse_message(raw)
    assert_headers_kept(parsed)
    assert parsed.text == "Na wierzchu"
    assert any("recovered from the raw header" in d for d in parsed.defects)
    assert [name for name, _ in refused(parsed)] == ["parts-not-unpacked"]
    assert not any("RecursionError" in d for d in parsed.defects)


async def test_the_part_budget_comes_from_settings_and_the_refusal_is_recorded_not_mailed(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(mime_max_parts=4)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        mail = make_mail(
            sender="jan.kowalski@klient.example",
            subject="Dziesięć plików",
            attachments=[(f"plik-{index}.txt", f"zawartość {index}".encode()) for index in range(10)],
        )
        code, _ = await send(settings, mail)
        assert code == 250
        await settle(gateway, outbox=True)
        (case,) = all_cases(gateway)
    finally:
        await gateway.stop()
    attachments = case["messages"][0]["attachments"]
    stored = [a for a in attachments if not a["refused"]]
    refused_rows = [a for a in attachments if a["refused"]]
    assert 0 < len(stored) < 10  # the budget of 4 parts (text body included) held
    assert [a["filename"] for a in refused_rows] == ["parts-not-unpacked"]
    assert "part" in (refused_rows[0]["reason"] or "")
    # The sender hears about files over the size limit, not about a budget: no attachment notice.
    to_sender = sent_to(settings, "jan.kowalski@klient.example")
    assert to_sender, "the acknowledgement should have been sent"
    assert all("załącznik" not in str(message["Subject"]).lower() for message in to_sender)
