"""The mail templates: every kind renders in every language with its documented context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError, meta

from gateway.outbound.templates import MailTemplateError, MailTemplates, RenderedMail

BUILTIN = Path(__file__).resolve().parent.parent / "templates"
LANGUAGES = ("pl", "en")

COMMON: dict[str, Any] = {
    "case_number": "2026-000123",
    "case_subject": "Nie działa poczta na domenie",
    "support_address": "bok@example.test",
    "support_name": "Biuro Obsługi Klienta",
    "customer_name": "Jan Kowalski",
}

# The context contract of each kind, beyond COMMON (the brief and SPEC §6-§7).
EXTRA: dict[str, dict[str, Any]] = {
    "ack": {"received_subject": "Nie działa poczta na domenie"},
    "staff_reply": {
        "body": "Dzień dobry,\n\nskrzynka działa już poprawnie.\n\nPozdrawiam\nAnna",
        "staff_name": "Anna Nowak",
    },
    "notification": {
        "customer_address": "jan@example.com",
        "body": "Od rana nie dochodzą maile.",
        "attachments": [{"filename": "zrzut.png", "size": 123_456}],
        "refused": [{"filename": "logi.zip", "size": 20_000_000, "reason": "over the 15 MiB limit"}],
        "is_new_case": True,
        "commands_help": True,
        "sender_trust": "SPF pass, DKIM pass, DMARC pass: sender authenticated",
    },
    "attachment_refused": {
        "refused": [
            {"filename": "backup.tar.gz", "size": 15_728_641, "content_type": "application/gzip"},
            {"filename": "film.mp4", "size": 40_000_000, "content_type": "video/mp4"},
        ],
        "limit_bytes": 15 * 1024 * 1024,
    },
    "closed": {"by_staff": False, "idle_days": 7},
    "stranger_split": {},
    # README "Sender trust": to senders who are not authenticated, and to staff about forged staff mail.
    "ack_unverified": {},
    "attachment_refused_unverified": {
        "refused": [{"filename": "film.mp4", "size": 40_000_000, "content_type": "video/mp4"}],
        "limit_bytes": 15 * 1024 * 1024,
    },
    "unverified_staff": {
        "claimed_sender": "anna@example.test",
        "sender_trust": "SPF fail, DKIM none, DMARC fail: sender NOT authenticated",
        "body": "Proszę podać hasło.",
    },
    "delivery_failed": {
        "recipient": "jan@example.com",
        "error": "550 5.1.1 <jan@example.com>: Recipient address rejected",
        "original_subject": "Re: Nie działa poczta na domenie",
    },
}
WITH_HTML = {"ack", "staff_reply", "attachment_refused", "closed", "stranger_split"}


def context(kind: str, **changes: Any) -> dict[str, Any]:
    return {**COMMON, **EXTRA[kind], **changes}


@pytest.fixture(scope="module")
def templates() -> MailTemplates:
    return MailTemplates(builtin_dir=BUILTIN)


def test_kinds_lists_every_mail_and_no_partials(templates: MailTemplates) -> None:
    assert set(templates.kinds) == set(EXTRA)
    assert not any(kind.startswith("_") for kind in templates.kinds)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(EXTRA))
def test_every_kind_renders_with_its_full_context(templates: MailTemplates, kind: str, language: str) -> None:
    # StrictUndefined: rendering succeeds only if the template needs nothing beyond the contract.
    mail = templates.render(kind, language=language, context=context(kind))
    assert isinstance(mail, RenderedMail)
    assert mail.subject and "\n" not in mail.subject and mail.subject == mail.subject.strip()
    # The caller adds the tag; a template adding it too would double it.
    assert "[#" not in mail.subject
    assert mail.text.endswith("\n") and not mail.text.startswith("\n")
    assert COMMON["case_number"] in mail.text
    assert "{{" not in mail.text and "{%" not in mail.text
    if kind in WITH_HTML:
        assert mail.html is not None
        assert mail.html.lstrip().startswith("<!DOCTYPE html>")
        assert f'lang="{language}"' in mail.html
        assert COMMON["case_number"] in mail.html
        # No remote resources: nothing is fetched when the customer opens the mail.
        for remote in ("http://", "https://", "<img", "<link", "<script", "@import"):
            assert remote not in mail.html
    else:
        assert mail.html is None


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("closed", {"by_staff": True, "idle_days": 0}),
        ("closed", {"by_staff": False, "idle_days": 1}),
        ("notification", {"is_new_case": False, "commands_help": False, "attachments": [], "refused": []}),
        ("attachment_refused", {"refused": [{"filename": "a.iso", "size": 16_000_000, "content_type": "x"}]}),
        ("staff_reply", {"staff_name": ""}),
        ("ack", {"customer_name": "", "received_subject": ""}),
        ("delivery_failed", {"customer_name": "", "original_subject": ""}),
    ],
)
def test_every_branch_renders(templates: MailTemplates, kind: str, changes: dict[str, Any], language: str) -> None:
    mail = templates.render(kind, language=language, context=context(kind, **changes))
    assert mail.subject and "\n" not in mail.subject


@pytest.mark.parametrize("language", LANGUAGES)
def test_template_variables_stay_within_the_contract(language: str) -> None:
    """Statically, so that branches no test renders cannot use an undocumented variable either."""
    templates = MailTemplates(builtin_dir=BUILTIN)
    env = templates._text_env  # the parser, not a rendering
    known_globals = set(env.globals)
    # Partials see whatever context the including kind has; staff_name is only tested with
    # "is defined", so COMMON plus staff_name is their contract.
    allowed_partial = set(COMMON) | {"staff_name"}
    for path in sorted((BUILTIN / language).glob("*.j2")):
        source = path.read_text(encoding="utf-8")
        used = meta.find_undeclared_variables(env.parse(source)) - known_globals
        kind = path.stem
        allowed = allowed_partial if kind.startswith("_") else set(COMMON) | set(EXTRA[kind])
        assert used <= allowed, f"{path} uses {sorted(used - allowed)} outside its contract"


def test_a_missing_context_variable_fails_loudly(templates: MailTemplates) -> None:
    incomplete = context("closed")
    del incomplete["idle_days"]
    with pytest.raises(UndefinedError):
        templates.render("closed", language="pl", context=incomplete)
    incomplete = context("attachment_refused")
    incomplete["refused"] = [{"filename": "x.bin"}]  # no size
    with pytest.raises(UndefinedError):
        templates.render("attachment_refused", language="en", context=incomplete)


@pytest.mark.parametrize("language", LANGUAGES)
def test_subject_is_one_line(templates: MailTemplates, language: str) -> None:
    ctx = context("closed", case_subject="Pierwsza linia\r\n  druga\tlinia  ")
    mail = templates.render("closed", language=language, context=ctx)
    assert "\n" not in mail.subject and "\r" not in mail.subject and "\t" not in mail.subject
    assert "Pierwsza linia druga linia" in mail.subject
    assert "  " not in mail.subject


@pytest.mark.parametrize("language", LANGUAGES)
def test_html_escapes_while_text_and_subject_keep_content_verbatim(templates: MailTemplates, language: str) -> None:
    body = 'Proszę sprawdzić <script>alert("x")</script> & <b>to</b>\ndruga linia'
    ctx = context("staff_reply", body=body, case_subject="Faktura <pilne> & zwrot")
    mail = templates.render("staff_reply", language=language, context=ctx)

    assert body in mail.text
    assert "&lt;" not in mail.text and "&amp;" not in mail.text
    assert mail.subject == "Re: Faktura <pilne> & zwrot"

    assert mail.html is not None
    assert "<script" not in mail.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;to&lt;/b&gt;" in mail.html
    assert "<br>" in mail.html  # line breaks survive as markup, the text itself does not
    assert "Faktura &lt;pilne&gt; &amp; zwrot" in mail.html  # the <title>


def test_html_escaping_does_not_depend_on_the_template_asking_for_it(tmp_path: Path) -> None:
    # An operator's override without any {% autoescape %} is still escaped.
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "ack.j2").write_text(
        "{% block subject %}S {{ received_subject }}{% endblock %}"
        "{% block text %}{{ received_subject }}{% endblock %}"
        "{% block html %}<p>{{ received_subject }}</p>{% endblock %}",
        encoding="utf-8",
    )
    templates = MailTemplates(builtin_dir=BUILTIN, override_dir=tmp_path)
    mail = templates.render("ack", language="pl", context=context("ack", received_subject="<i>x</i>"))
    assert mail.subject == "S <i>x</i>"
    assert mail.text == "<i>x</i>\n"
    assert mail.html == "<p>&lt;i&gt;x&lt;/i&gt;</p>\n"


def test_override_dir_wins_over_builtin(tmp_path: Path) -> None:
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "ack.j2").write_text(
        "{% block subject %}Własny temat {{ case_number }}{% endblock %}"
        "{% block text %}Własna treść {{ case_number }}{% endblock %}",
        encoding="utf-8",
    )
    # A partial can be overridden too: every kind including it picks the operator's version.
    (tmp_path / "pl" / "_signature_text.j2").write_text("Firma XYZ – podpis operatora\n", encoding="utf-8")
    templates = MailTemplates(builtin_dir=BUILTIN, override_dir=tmp_path)

    ack = templates.render("ack", language="pl", context=context("ack"))
    assert ack.subject == "Własny temat 2026-000123"
    assert ack.text == "Własna treść 2026-000123\n"
    assert ack.html is None  # the override has no html block, and the builtin's is not mixed in

    closed = templates.render("closed", language="pl", context=context("closed"))
    assert "Firma XYZ – podpis operatora" in closed.text
    assert "Pozdrawiamy" not in closed.text

    # Languages the override does not cover still come from the builtin dir.
    assert templates.render("ack", language="en", context=context("ack")).subject.startswith("We have")
    # And kinds the override does not cover.
    assert templates.render("stranger_split", language="pl", context=context("stranger_split")).html


def test_an_override_of_the_default_language_beats_the_builtin_fallback(tmp_path: Path) -> None:
    builtin = tmp_path / "builtin"
    override = tmp_path / "override"
    (builtin / "pl").mkdir(parents=True)
    (override / "pl").mkdir(parents=True)
    (builtin / "pl" / "ack.j2").write_text("{% block subject %}builtin{% endblock %}{% block text %}b{% endblock %}")
    (override / "pl" / "ack.j2").write_text("{% block subject %}override{% endblock %}{% block text %}o{% endblock %}")
    templates = MailTemplates(builtin_dir=builtin, override_dir=override)
    # No en template anywhere: override/pl comes before builtin/pl.
    assert templates.render("ack", language="en", context={}).subject == "override"


def test_language_present_only_in_override_is_used(tmp_path: Path) -> None:
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "closed.j2").write_text(
        "{% block subject %}Vorgang geschlossen{% endblock %}{% block text %}Guten Tag{% endblock %}",
        encoding="utf-8",
    )
    templates = MailTemplates(builtin_dir=BUILTIN, override_dir=tmp_path)
    assert templates.render("closed", language="de", context=context("closed")).subject == "Vorgang geschlossen"
    # Other kinds in that language fall back to the default language.
    assert templates.render("ack", language="de", context=context("ack")).text.startswith("Dzień dobry,")


@pytest.mark.parametrize("language", [None, "", "de", "xx-YY", "../en", "en/../../etc", "PL"])
def test_unknown_or_odd_language_falls_back_to_polish(templates: MailTemplates, language: str | None) -> None:
    mail = templates.render("ack", language=language, context=context("ack"))
    polish = templates.render("ack", language="pl", context=context("ack"))
    assert mail == polish
    assert mail.text.startswith("Dzień dobry,")


@pytest.mark.parametrize("language", ["en", "EN", "en-GB", "en_US"])
def test_language_tags_select_their_primary_language(templates: MailTemplates, language: str) -> None:
    assert templates.render("ack", language=language, context=context("ack")).text.startswith("Hello")


def test_default_language_is_configurable() -> None:
    templates = MailTemplates(builtin_dir=BUILTIN, default_language="en")
    assert templates.render("ack", language="de", context=context("ack")).text.startswith("Hello")


def test_a_template_without_html_block_gives_none(templates: MailTemplates) -> None:
    for kind in ("notification", "delivery_failed"):
        for language in LANGUAGES:
            assert templates.render(kind, language=language, context=context(kind)).html is None


def test_attachment_refused_names_each_file_with_sizes_and_the_exact_limit(templates: MailTemplates) -> None:
    ctx = context("attachment_refused")
    pl = templates.render("attachment_refused", language="pl", context=ctx)
    en = templates.render("attachment_refused", language="en", context=ctx)
    for mail in (pl, en):
        assert mail.html is not None
        for part in (mail.text, mail.html):
            assert "backup.tar.gz" in part and "film.mp4" in part
    for part in (pl.text, pl.html or ""):
        assert "15 728 640 bajtów" in part
        assert "15,0 MB" in part  # the limit, Polish decimal comma
        assert "15 728 641 bajtów" in part  # one byte over: the exact size shows why it was refused
        assert "38,1 MB" in part
    for part in (en.text, en.html or ""):
        assert "15,728,640 bytes" in part
        assert "15.0 MB" in part
        assert "38.1 MB" in part


def test_attachment_refused_limit_follows_the_configured_value(templates: MailTemplates) -> None:
    ctx = context("attachment_refused", limit_bytes=10 * 1024 * 1024)
    assert "10 485 760 bajtów" in templates.render("attachment_refused", language="pl", context=ctx).text


@pytest.mark.parametrize("language", LANGUAGES)
def test_stranger_split_reveals_nothing_of_the_other_case(templates: MailTemplates, language: str) -> None:
    other_number = "2025-000999"
    ctx = context(
        "stranger_split",
        case_number="2026-000500",
        # Given by mistake, or derived from the stranger's own subject line: never shown.
        case_subject=f"Re: [#{other_number}] Zwrot za domenę sklep.pl",
        other_case_number=other_number,
        other_case_subject="Zwrot za domenę sklep.pl",
    )
    mail = templates.render("stranger_split", language=language, context=ctx)
    for part in (mail.subject, mail.text, mail.html or ""):
        assert other_number not in part
        assert "sklep.pl" not in part
    assert "2026-000500" in mail.text and "[#2026-000500]" in mail.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_notification_lists_attachments_and_explains_commands(templates: MailTemplates, language: str) -> None:
    mail = templates.render("notification", language=language, context=context("notification"))
    assert "jan@example.com" in mail.subject
    assert "zrzut.png" in mail.text and "logi.zip" in mail.text
    assert "Od rana nie dochodzą maile." in mail.text
    for command in ("#close", "#open", "#category", "#note"):
        assert command in mail.text
    quiet = templates.render("notification", language=language, context=context("notification", commands_help=False))
    assert "#close" not in quiet.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_closed_distinguishes_staff_close_from_idle_close(templates: MailTemplates, language: str) -> None:
    idle = templates.render("closed", language=language, context=context("closed", by_staff=False, idle_days=14))
    staff = templates.render("closed", language=language, context=context("closed", by_staff=True))
    assert "14" in idle.text
    assert idle.text != staff.text


def test_polish_text_is_polish(templates: MailTemplates) -> None:
    mail = templates.render("ack", language="pl", context=context("ack"))
    assert mail.text.startswith("Dzień dobry,\n")
    assert "Pozdrawiamy" in mail.text
    assert "[#2026-000123]" in mail.text
    closed = templates.render("closed", language="pl", context=context("closed", idle_days=1))
    assert "od 1 dnia" in closed.text
    closed = templates.render("closed", language="pl", context=context("closed", idle_days=3))
    assert "od 3 dni" in closed.text


def test_staff_reply_keeps_the_signature_delimiter(templates: MailTemplates) -> None:
    mail = templates.render("staff_reply", language="pl", context=context("staff_reply"))
    assert "\n-- \nAnna Nowak\n" in mail.text


@pytest.mark.parametrize("kind", ["no_such_kind", "_signature_text", "../pl/ack", "pl/ack", ""])
def test_unknown_kind_is_an_error(templates: MailTemplates, kind: str) -> None:
    with pytest.raises(MailTemplateError):
        templates.render(kind, language="pl", context=context("ack"))


def test_a_template_without_required_blocks_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "ack.j2").write_text("{% block text %}only text{% endblock %}", encoding="utf-8")
    templates = MailTemplates(builtin_dir=BUILTIN, override_dir=tmp_path)
    with pytest.raises(MailTemplateError, match="subject"):
        templates.render("ack", language="pl", context=context("ack"))


def test_templates_are_compiled_once(templates: MailTemplates) -> None:
    templates.render("ack", language="pl", context=context("ack"))
    first = templates._text_env.get_template("pl/ack.j2")
    templates.render("ack", language="pl", context=context("ack"))
    assert templates._text_env.get_template("pl/ack.j2") is first
