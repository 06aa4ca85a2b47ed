"""The DKIM check looks for a DKIM-Signature field before it hands a message to dkimpy.

dkimpy splits the whole message into lines first (one call holding the GIL: 0.6 s for a 59 MB
message, while the SMTP listener's acknowledgements waited), so unsigned mail is answered `none`
from its header block alone. The scan must never miss a signature dkimpy would verify: every
message here is compared with dkimpy's own header parser (dkimpy 1.1.8, `rfc822_parse`), the
shared corpus's real mail too.
"""

from __future__ import annotations

import dkim
import pytest

from gateway.trust.checks import check_dkim, names_a_dkim_signature
from gateway.trust.resolver import Budget, Resolver
from gateway.trust.verdict import FAIL, NONE, PASS
from tests.helpers import CORPUS, make_mail
from tests.servers.dns import dns_server
from tests.trust_helpers import DkimKey, dkim_signed, make_dkim_key, publish_test_domains


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return make_dkim_key()


def _dkimpy_signatures(raw: bytes) -> int | None:
    """How many DKIM-Signature fields dkimpy reads in `raw` (None: it cannot read the header block)."""
    try:
        headers, _body = dkim.rfc822_parse(raw)
    except dkim.MessageFormatError:
        return None
    return sum(1 for name, _ in headers if name.lower() == b"dkim-signature")


def _lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def _signed_variants(key: DkimKey) -> dict[str, bytes]:
    signed = dkim_signed(make_mail(subject="Podpisany"), key)
    return {
        "signed, CRLF": signed,
        "signed, LF": _lf(signed),
        "signed, field name in lower case": signed.replace(b"DKIM-Signature:", b"dkim-signature:", 1),
        "signed below a relay's trace fields": b"Received: from mx by us\r\n\tid 1\r\nX-Spam: no\r\n" + signed,
        "two signatures": dkim_signed(signed, key),
    }


def _unsigned_variants() -> dict[str, bytes]:
    plain = make_mail(subject="Bez podpisu").as_bytes()
    header_end = plain.index(b"\n\n") if b"\n\n" in plain else plain.index(b"\r\n\r\n")
    quoted_in_body = plain + b"\nDKIM-Signature: v=1; d=quoted.example; b=abc\n"
    with_look_alike = b"X-DKIM-Signature: v=1\r\nX-Original-DKIM-Signature: v=1\r\n" + plain
    folded_mention = plain[:header_end] + b"\n\tDKIM-Signature: inside a folded field" + plain[header_end:]
    return {
        "unsigned": plain,
        "a signature quoted in the body": quoted_in_body,
        "look-alike field names": with_look_alike,
        "the name inside a folded field": folded_mention,
    }


def test_every_signature_dkimpy_reads_is_found(key: DkimKey) -> None:
    for description, raw in _signed_variants(key).items():
        assert _dkimpy_signatures(raw), f"{description}: the test message itself is not signed"
        assert names_a_dkim_signature(raw), description


def test_unsigned_mail_is_not_taken_for_signed() -> None:
    for description, raw in _unsigned_variants().items():
        assert _dkimpy_signatures(raw) == 0, description
        assert not names_a_dkim_signature(raw), description
    # After an empty first line dkimpy reads no header at all; the scan may say yes (dkimpy then
    # answers none), so only dkimpy's side is asserted.
    assert _dkimpy_signatures(b"\r\nDKIM-Signature: v=1\r\n\r\nbody\r\n") == 0


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"optional shared corpus not found at {CORPUS}")
def test_the_scan_agrees_with_dkimpy_on_the_corpus() -> None:
    files = [path for path in sorted(CORPUS.rglob("*")) if path.is_file()]
    signed = 0
    for path in files:
        raw = path.read_bytes()
        count = _dkimpy_signatures(raw)
        if count:
            signed += 1
            assert names_a_dkim_signature(raw), path.relative_to(CORPUS)
    assert signed, "no DKIM-signed message in the corpus: the comparison proves nothing"


def test_unsigned_mail_gets_none_without_dkimpy(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("dkimpy was handed an unsigned message")

    monkeypatch.setattr(dkim, "DKIM", refuse)
    big = make_mail(subject="Duży, bez podpisu", attachments=[("dump.bin", bytes(8 * 1024 * 1024))]).as_bytes()
    result = check_dkim(resolver=Resolver(), budget=Budget.of(5), raw=big)
    assert result.result == NONE


def test_a_signed_message_is_still_verified(key: DkimKey) -> None:
    signed = dkim_signed(make_mail(subject="Podpisany"), key)
    with dns_server() as server:
        publish_test_domains(server, key)
        resolver = Resolver(server.address)
        assert check_dkim(resolver=resolver, budget=Budget.of(5), raw=signed).result == PASS
        assert check_dkim(resolver=resolver, budget=Budget.of(5), raw=_lf(signed)).result == PASS
        tampered = signed.replace(b"Podpisany", b"Podrobiony")
        assert check_dkim(resolver=resolver, budget=Budget.of(5), raw=tampered).result == FAIL
