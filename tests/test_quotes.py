"""strip_quoted_reply: the Polish client vectors from the shared corpus, and the layouts around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.parse import parse_message
from gateway.staff.quotes import strip_quoted_reply

POLISH = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "polish-clients"
EXPECTED: dict[str, dict[str, str]] = (
    json.loads((POLISH / "expected.json").read_text(encoding="utf-8")) if POLISH.is_dir() else {}
)


@pytest.mark.skipif(not EXPECTED, reason=f"polish-clients corpus not found at {POLISH}")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_polish_client_vectors(name: str) -> None:
    expected = EXPECTED[name]
    parsed = parse_message((POLISH / name).read_bytes())
    # expected.json stores new_text without trailing whitespace, and so does strip_quoted_reply.
    assert strip_quoted_reply(parsed.text) == expected["new_text"]
    assert f"<{parsed.in_reply_to[0]}>" == expected["in_reply_to"]
    assert expected["case"] in parsed.subject
    assert parsed.defects == ()


@pytest.mark.skipif(not EXPECTED, reason=f"polish-clients corpus not found at {POLISH}")
def test_every_polish_client_file_has_a_vector() -> None:
    assert sorted(p.name for p in POLISH.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # English attribution, Gmail style, wrapped over two lines.
        (
            "Thanks, fixed.\n\nOn Tue, Nov 25, 2026 at 10:00 AM Support <bok@example.test>\nwrote:\n\n> Hello\n",
            "Thanks, fixed.",
        ),
        ("Ok.\n\nOn 25/11/2026 10:00, Support wrote:\n> Hello\n>\n> Bye\n", "Ok."),
        # Thunderbird / webmail Polish.
        ("Dziękuję.\n\nW dniu 25.11.2026 o 10:00, BOK pisze:\n> Dzień dobry\n", "Dziękuję."),
        ("Dziękuję.\nDnia 25 listopada 2026 10:00 BOK <bok@example.test> napisał(a):\n> x\n", "Dziękuję."),
        ("Tak.\n\nUżytkownik Jan Kowalski napisał:\n> pytanie\n", "Tak."),
        # Gmail Polish, date line wrapped.
        ("Działa!\n\nśr., 26 lis 2026 o 09:12 Jan Nowak <jan@example.pl>\nnapisał(a):\n\n> x\n", "Działa!"),
        # Apple Mail: the attribution sits inside the quote.
        (
            "Witam\n\n> Wiadomość napisana przez BOK <bok@example.test> w dniu 25 lis 2026, o godz. 10:00:\n>\n> x",
            "Witam",
        ),
        # Separators.
        (
            "Proszę o telefon.\n\n-----Original Message-----\nFrom: BOK\nSent: Tuesday\nTo: me\nSubject: x\n\nold",
            "Proszę o telefon.",
        ),
        ("Proszę o telefon.\n-----Oryginalna wiadomość-----\nOd: BOK\nDo: mnie\nold", "Proszę o telefon."),
        # Outlook blocks, Polish and English, with and without the rule.
        (
            "Załącznik w mailu.\n\n________________________________\nOd: BOK <bok@example.test>\nWysłane: wtorek\nDo: Ja\nTemat: [#1] x\n\nold",
            "Załącznik w mailu.",
        ),
        (
            "See attached.\n\nFrom: BOK <bok@example.test>\nSent: Tuesday, November 25, 2026 10:00 AM\nTo: Me\nSubject: x\n\nold",
            "See attached.",
        ),
        (
            "See attached.\n\n*From:* BOK <bok@example.test>\n*Sent:* Tuesday\n*To:* Me\n*Subject:* x\n\nold",
            "See attached.",
        ),
        # Plain ">" quoting without an attribution line.
        ("My answer\n\n> your question\n> more\n", "My answer"),
        # Signatures stay.
        (
            "Odpowiedź\n\n-- \nJan Kowalski\ntel. 123\n\nW dniu 25.11.2026 o 10:00, BOK pisze:\n> x\n",
            "Odpowiedź\n\n-- \nJan Kowalski\ntel. 123",
        ),
        ("Odpowiedź\n\nW dniu 25.11.2026 o 10:00, BOK pisze:\n> x\n\n-- \nJan Kowalski", "Odpowiedź"),
        # CRLF input, trailing whitespace.
        ("Ok  \r\n\r\nOn Mon, 1 Jan 2026, A wrote:\r\n> q\r\n", "Ok"),
    ],
)
def test_quote_layouts(text: str, expected: str) -> None:
    assert strip_quoted_reply(text) == expected


def test_no_quote_returns_the_whole_text_trimmed() -> None:
    assert strip_quoted_reply("\n\nJust a question.\n\n-- \nJan\n\n") == "Just a question.\n\n-- \nJan"
    assert strip_quoted_reply("") == ""


def test_a_line_that_merely_mentions_from_is_no_quote() -> None:
    text = "From: my logs, the error is below.\nSubject to change.\nThanks"
    assert strip_quoted_reply(text) == text


def test_interleaved_answers_are_kept_whole() -> None:
    text = "Hi,\n\n> Which domain?\nexample.pl\n\n> Since when?\nYesterday."
    assert strip_quoted_reply(text) == text


def test_bottom_posted_reply_returns_the_text_below_the_quote() -> None:
    text = "On Mon, 1 Jan 2026 at 10:00, BOK <bok@example.test> wrote:\n> Question?\n\nMy answer.\n"
    assert strip_quoted_reply(text) == "My answer."


def test_forwarded_message_is_not_stripped() -> None:
    text = "Please see below.\n\n---------- Forwarded message ---------\nFrom: A <a@x.pl>\nDate: Mon\nSubject: s\nTo: B\n\nbody"
    assert strip_quoted_reply(text) == text


def test_only_a_quote_is_returned_as_is() -> None:
    assert strip_quoted_reply("> only quoted\n> text\n") == "> only quoted\n> text"
