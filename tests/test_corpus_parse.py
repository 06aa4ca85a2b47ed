"""Every message of the shared real-world corpus goes through parse_message without an exception
and with sane results; the TNEF samples are wrapped in messages and checked against upstream's lists."""

from __future__ import annotations

import base64
import unicodedata
from pathlib import Path

import pytest

from gateway.parse import ParsedMessage, parse_message

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
# The real-world corpus is optional (it lives beside the checkout, not in it): only the tests that
# read it skip without it; the ones below that build their own messages always run.
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"optional shared corpus not present at {CORPUS} (../shared/corpus beside the checkout)"
)

MESSAGES = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".eml", ".txt") and p.is_file())
TNEF_FILES = sorted((CORPUS / "mimekit" / "tnef").glob("*.tnef"))
LIMIT = 15 * 1024 * 1024

# tnefparse finds real files that upstream's lists (written for MimeKit's reader) do not name;
# dropping them would lose data, so they are expected here on purpose.
TNEF_EXTRA_FILES = {
    "long-filename": {"allproductsmar2000.dat"},
    "missing-filenames": {"generpts.src", "TechlibDEC99.doc", "TechlibDEC99-JAN00.doc", "TechlibNOV99.doc"},
}
# Upstream lists the message body as body.rtf / body.html (and MimeKit's reader would add body.txt):
# we keep RTF as an attachment, use the HTML as the message's HTML, and keep a plain body that
# differs from the message's own text as body.txt.
BODY_NAMES = {"body.rtf", "body.html", "body.txt"}


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def _or_missing(paths: list[Path]) -> list[object]:
    """The parameter list, or one skipped placeholder that says why (not pytest's "empty parameter set")."""
    return list(paths) or [pytest.param(None, id="corpus-missing", marks=needs_corpus)]


@needs_corpus
def test_corpus_is_complete() -> None:
    assert len(MESSAGES) >= 150
    assert len(TNEF_FILES) == 19


@pytest.mark.parametrize("path", _or_missing(MESSAGES), ids=_id)
def test_corpus_message_parses_sanely(path: Path) -> None:
    parsed = parse_message(path.read_bytes())
    assert isinstance(parsed, ParsedMessage)
    assert_sane(parsed)


def assert_sane(parsed: ParsedMessage) -> None:
    assert parsed.message_id and not set(parsed.message_id) & set("<> \t\r\n")
    assert parsed.message_id_synthesised == parsed.message_id.endswith("@synthesised.invalid")
    for address in (parsed.from_address, *parsed.to, *parsed.cc, *parsed.reply_to):
        assert address == address.lower()
        # Spaces only inside a quoted local part ("big bug"@example.com is an address one can answer).
        assert " " not in address or (address.startswith('"') and " " not in address.rpartition('"')[2])
    assert all(parsed.to) and all(parsed.cc) and all(parsed.reply_to)
    assert all(ref and "<" not in ref and ">" not in ref for ref in (*parsed.references, *parsed.in_reply_to))
    assert parsed.date is None or parsed.date.tzinfo is None
    assert isinstance(parsed.text, str) and (parsed.html is None or isinstance(parsed.html, str))
    assert "\r" not in parsed.text
    for name, value in parsed.headers:
        assert name == name.lower() and isinstance(value, str)
    for attachment in parsed.attachments:
        name = attachment.filename
        assert name and name not in (".", "..")
        assert "/" not in name and "\\" not in name
        assert not any(unicodedata.category(ch) == "Cc" for ch in name)
        assert attachment.content_type == attachment.content_type.lower() and "/" in attachment.content_type
        assert isinstance(attachment.content, bytes)
        assert attachment.content_id is None or not attachment.content_id.startswith("<")
    assert all(isinstance(d, str) and d for d in parsed.defects)


# -- files that needed special handling, with what they must yield ---------------------------------


def parse_corpus(relative: str) -> ParsedMessage:
    return parse_message(corpus_bytes(relative))


def corpus_bytes(relative: str) -> bytes:
    path = CORPUS / relative
    if not path.is_file():
        pytest.skip(f"optional shared corpus file {relative} not present at {CORPUS}")
    return path.read_bytes()


@pytest.mark.parametrize(
    "relative",
    [
        "mikel-mail/mime_emails/raw_email_with_illegal_boundary.eml",
        "mikel-mail/mime_emails/raw_email_with_quoted_illegal_boundary.eml",
    ],
)
def test_illegal_boundaries_still_split(relative: str) -> None:
    parsed = parse_corpus(relative)
    assert parsed.text.startswith("Hello\nThis is an outlook test")
    assert parsed.html is not None and "outlook" in parsed.html


def test_binary_part_behind_an_unquoted_boundary() -> None:
    parsed = parse_corpus("mikel-mail/mime_emails/raw_email_with_binary_encoded.eml")
    assert [a.filename for a in parsed.attachments] == ["2013-08-13_19-08-28-1.jpg"]


def test_broken_header_folding_is_repaired() -> None:
    parsed = parse_corpus("mimekit/messages/issue358.txt")
    assert parsed.subject == "R: R: R: I: FR-selca LA selcaE"
    assert parsed.text.startswith("Test headers")
    assert parsed.html is not None


def test_byte_order_mark_before_the_headers() -> None:
    parsed = parse_corpus("mimekit/messages/feedback-report.txt")
    assert parsed.from_address == "abusedesk@example.com"
    assert parsed.subject == "FW: Earn money"
    assert [a.content_type for a in parsed.attachments] == ["message/feedback-report", "message/rfc822"]


def test_huge_to_header() -> None:
    parsed = parse_corpus("mimekit/messages/stack-overflow.txt")
    assert parsed.from_address == "test@test.com"
    assert parsed.text.strip() == "Message Body"


def test_mhtml_root_found_by_type() -> None:
    parsed = parse_corpus("mimekit/messages/multipart-related-mhtml.txt")
    assert parsed.html is not None
    assert [(a.filename, a.inline) for a in parsed.attachments] == [("image1", True)]


def test_outlook_message_with_rtf_tnef() -> None:
    parsed = parse_corpus("mimekit/tnef/rich-text.eml")
    names = [a.filename for a in parsed.attachments]
    assert names[0] == "kitten-playing-with-a-christmas-tree.jpg"
    assert "body.rtf" in names
    rtf = next(a for a in parsed.attachments if a.filename == "body.rtf")
    assert rtf.content.startswith(b"{\\rtf1") and rtf.content.count(b"{") == rtf.content.count(b"}")


def test_outlook_message_with_html_tnef() -> None:
    parsed = parse_corpus("mimekit/tnef/ukr.eml")
    assert parsed.html is not None and "шостий" in parsed.html
    assert parsed.text.startswith("шостий")
    assert parsed.attachments == ()


# -- TNEF samples, wrapped in messages -------------------------------------------------------------


def wrap_tnef(tnef: bytes) -> bytes:
    encoded = base64.encodebytes(tnef).replace(b"\n", b"\r\n")
    return (
        b"From: Outlook User <user@example.pl>\r\nTo: bok@example.test\r\nSubject: winmail\r\n"
        b"Message-ID: <tnef@example.pl>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="tnef"\r\n\r\n'
        b"--tnef\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachments.\r\n"
        b'--tnef\r\nContent-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b'Content-Disposition: attachment; filename="winmail.dat"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + encoded
        + b"--tnef--\r\n"
    )


@pytest.mark.parametrize("path", _or_missing(TNEF_FILES), ids=lambda p: p.stem)
def test_tnef_names_match_upstream_list(path: Path) -> None:
    expected = {line for line in path.with_suffix(".list").read_text().splitlines() if line}
    parsed = parse_message(wrap_tnef(path.read_bytes()))
    assert_sane(parsed)
    assert parsed.text == "See the attachments."
    names = [a.filename for a in parsed.attachments]
    if not expected:  # upstream expects nothing: the stream holds no file and no body
        assert names == ["winmail.dat"]
        assert any("winmail.dat holds no attachments" in d for d in parsed.defects)
        return
    files = {n for n in names if n not in BODY_NAMES}
    assert files == (expected - BODY_NAMES) | TNEF_EXTRA_FILES.get(path.stem, set())
    bodies = {n for n in names if n in BODY_NAMES} | ({"body.html"} if parsed.html is not None else set())
    assert expected & BODY_NAMES <= bodies
    assert "winmail.dat" not in names


def test_tnef_inline_images_follow_the_html() -> None:
    parsed = parse_message(wrap_tnef(corpus_bytes("mimekit/tnef/panic.tnef")))
    assert parsed.html is not None
    assert [(a.filename, a.inline) for a in parsed.attachments] == [
        ("image001.jpg", True),
        ("image002.jpg", True),
        ("image003.png", True),
        ("body.txt", False),
    ]


# -- the 15 MiB boundary -----------------------------------------------------------------------------


def test_attachments_at_the_size_limit_keep_exact_sizes() -> None:
    pattern = bytes(range(256))
    at_limit = (pattern * (LIMIT // 256 + 1))[:LIMIT]
    over_limit = at_limit + b"\x2a"
    parts = b"".join(
        b'--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="%s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" % name + base64.encodebytes(data).replace(b"\n", b"\r\n")
        for name, data in ((b"at-limit.bin", at_limit), (b"over-limit.bin", over_limit))
    )
    raw = (
        b"From: a@example.pl\r\nTo: bok@example.test\r\nMessage-ID: <big@example.pl>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n'
        b"--big\r\nContent-Type: text/plain\r\n\r\nTwo files.\r\n" + parts + b"--big--\r\n"
    )
    parsed = parse_message(raw)
    assert [(a.filename, a.size) for a in parsed.attachments] == [
        ("at-limit.bin", LIMIT),
        ("over-limit.bin", LIMIT + 1),
    ]
    assert parsed.attachments[0].content == at_limit and parsed.attachments[1].content == over_limit
    assert parsed.defects == ()
