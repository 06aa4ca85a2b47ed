"""GatewaySMTP._getaddr answers exactly as aiosmtpd 1.4.6's own for every MAIL FROM / RCPT TO
argument: its shortcut for `<local@domain>` (gateway.smtp.reader) must never read a path
differently, and whatever it does not recognise goes to the library's code unchanged."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from aiosmtpd.smtp import SMTP

from gateway.smtp.reader import _PLAIN_PATH_RE, GatewaySMTP

HANDWRITTEN = [
    "",
    "<>",
    "<a@b.c>",
    "<jan.kowalski@example.pl> SIZE=2048 BODY=8BITMIME",
    " <a@b.c>  SIZE=10",
    "<a@b.c>SIZE=1",
    "<a@b.c>\t SIZE=1",
    "<a@b.c> ",
    "<a@b.c> (comment) SIZE=1",
    "<a(comment)@b.c>",
    "<@relay.example,@other.example:a@b.c>",
    '<"quoted local"@b.c>',
    "<a@[192.0.2.1]>",
    "<a..b@c.d>",
    "<.a@c.d>",
    "<a.@c.d>",
    "<a@b..c>",
    "<a@-b.c>",
    "<a@b.c",
    "a@b.c",
    "a@b.c SIZE=1",
    "<ąę@żółw.pl>",
    "<a@żółw.pl>",
    "<a b@c.d>",
    "<a@b.c> <d@e.f>",
    "<a@b@c.d>",
    "<" + "x" * 64 + "@b.c>",
    "<" + "x" * 65 + "@b.c>",
    "<a@" + "d" * 300 + ".c>",
]
_ALPHABET = "aZ09.-_+!#'=?`{}|~\"()<>@ \t,;:[]\\ąé"
_ATEXT_AND_DOTS = "aZ09.-_+!#'=?`{}|~$%&*/^"


def _generated(count: int) -> list[str]:
    rng = random.Random(2026)
    args = []
    for _ in range(count):
        # Half near the shortcut's pattern (atext, dots, hyphens), half anything.
        alphabet, domain_alphabet = rng.choice([(_ATEXT_AND_DOTS, "ab.-9"), (_ALPHABET, "ab.-9[]ż ")])
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        domain = "".join(rng.choice(domain_alphabet) for _ in range(rng.randint(0, 8)))
        tail = rng.choice(["", " SIZE=1", "SIZE=1", "\t", " (c) X=1", " BODY=8BITMIME SMTPUTF8"])
        args.append(rng.choice(["", " ", "\t"]) + f"<{local}@{domain}>" + tail)
    return args


def _outcome(getaddr: Callable[[str], object], argument: str) -> object:
    """What `getaddr` returns, or the type of what it raises: the email package's parser fails with
    AttributeError on some paths (aiosmtpd answers those with a 500), and so must we."""
    try:
        return getaddr(argument)
    except Exception as error:
        return type(error)


def _session(local_part_limit: int) -> tuple[GatewaySMTP, SMTP]:
    # _getaddr reads nothing but local_part_limit: no connection, no event loop.
    ours, theirs = object.__new__(GatewaySMTP), object.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    return ours, theirs


@pytest.mark.parametrize("local_part_limit", [0, 64])
def test_every_argument_reads_as_aiosmtpd_reads_it(local_part_limit: int) -> None:
    ours, theirs = _session(local_part_limit)
    arguments = HANDWRITTEN + _generated(5000)
    for argument in arguments:
        assert _outcome(ours._getaddr, argument) == _outcome(lambda a: SMTP._getaddr(theirs, a), argument), argument
    # The comparison means something only if the shortcut took a fair share of them.
    shortcut = [argument for argument in arguments if _PLAIN_PATH_RE.fullmatch(argument)]
    assert len(shortcut) > 100, len(shortcut)


def test_an_over_long_local_part_is_refused_on_the_shortcut_too() -> None:
    ours, _ = _session(64)
    assert ours._getaddr("<" + "x" * 65 + "@b.c>") == (None, None)
    assert ours._getaddr("<" + "x" * 64 + "@b.c> SIZE=1") == ("x" * 64 + "@b.c", "SIZE=1")
