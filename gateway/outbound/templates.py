"""Render the gateway's outgoing mail (subject, text part, optional HTML part) from Jinja2 templates.

One file per mail kind and language, ``<dir>/<lang>/<kind>.j2``, with ``{% block subject %}``,
``{% block text %}`` and optionally ``{% block html %}``. Files whose name starts with ``_`` are
partials (signature, HTML layout) used through ``{% include %}`` / ``{% from ... import %}``; they
are not kinds. Each block is rendered on its own, so a kind file must define its blocks itself
(``{% extends %}`` would hide the parent's blocks from us and is therefore not supported).

Escaping: autoescaping in Jinja2 is decided when a template is *compiled*, so we keep two
Environments over the same loader: one without autoescape for the subject and the text part, one
with autoescape for the HTML part. Every template, include and macro reached from an HTML block is
compiled by the escaping Environment, so customer text can never inject markup into the HTML part,
even when an operator's override template forgets ``{% autoescape %}``; and the text part is never
polluted with ``&lt;`` entities. Both Environments use StrictUndefined: a missing context variable
is an error, not an empty string in a customer's mail.

Lookup for (kind, language): ``override_dir/<lang>``, ``builtin_dir/<lang>``, then the same two for
the default language. An unknown language uses the default language.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    pass_eval_context,
)
from jinja2.nodes import EvalContext
from markupsafe import Markup, escape

__all__ = ["MailTemplateError", "MailTemplates", "RenderedMail"]

_TEMPLATE_SUFFIX = ".j2"
# A language tag's primary subtag ("pl", "en", "pl-PL" -> "pl"); anything else is not a folder
# name we would ever look up, which also keeps odd input away from the file system.
_LANGUAGE_RE = re.compile(r"^([a-z]{2,3})(?:[-_][a-z0-9]+)*$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_MIB = 1024 * 1024


class MailTemplateError(LookupError):
    """A kind has no usable template (unknown kind, or a file without the required blocks)."""


@dataclass(frozen=True)
class RenderedMail:
    subject: str  # without the "[#NUMBER]" tag: the caller adds it
    text: str
    html: str | None


# --- formatting helpers available to every template ------------------------------------------


def _group_digits(value: int, lang: str = "pl") -> str:
    """15728640 -> "15 728 640" (pl) or "15,728,640" (en)."""
    grouped = f"{int(value):,}"
    # Polish groups thousands with a space; a plain one (not NBSP) keeps mail greppable.
    return grouped.replace(",", " ") if lang == "pl" else grouped


def _megabytes(value: int, lang: str = "pl") -> str:
    """Size in MB (MiB, as customers' systems show it) with one decimal: "16,2 MB" / "16.2 MB"."""
    number = f"{int(value) / _MIB:.1f}"
    return (number.replace(".", ",") if lang == "pl" else number) + " MB"


def _filesize(value: int, lang: str = "pl") -> str:
    """A human size for attachment lists: bytes, KB or MB."""
    value = int(value)
    if value < 1024:
        return f"{value} B"
    if value < _MIB:
        number = f"{value / 1024:.1f}"
        return (number.replace(".", ",") if lang == "pl" else number) + " KB"
    return _megabytes(value, lang)


def _plural(count: int, *forms: str) -> str:
    """Pick the word form for a count.

    Polish has three forms (1 plik, 2 pliki, 5 plików; 22 pliki, 12 plików), English two
    (1 file, 2 files); the number of forms given selects the rule.
    """
    count = abs(int(count))
    if len(forms) == 2:
        return forms[0] if count == 1 else forms[1]
    if len(forms) != 3:
        raise ValueError("plural() takes two (en) or three (pl) forms")
    one, few, many = forms
    if count == 1:
        return one
    if count % 10 in (2, 3, 4) and count % 100 not in (12, 13, 14):
        return few
    return many


@pass_eval_context
def _nl2br(eval_ctx: EvalContext, value: str) -> str | Markup:
    """Plain text for HTML: escaped, line breaks kept (Outlook ignores CSS white-space)."""
    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if eval_ctx.autoescape:
        return Markup("<br>\n").join(escape(line) for line in lines)
    return "\n".join(lines)


def _make_environment(loader: FileSystemLoader, *, autoescape: bool) -> Environment:
    env = Environment(
        loader=loader,
        autoescape=autoescape,
        undefined=StrictUndefined,
        # Block tags on their own line leave no stray blank lines or indentation in the text part.
        trim_blocks=True,
        lstrip_blocks=True,
        # Partials keep their final newline, so "{% include %}" followed by a blank line in the
        # including file gives a blank line in the mail, as it reads in the source.
        keep_trailing_newline=True,
        auto_reload=True,  # an operator's edited override is picked up without a restart
    )
    env.filters.update(digits=_group_digits, mb=_megabytes, filesize=_filesize, nl2br=_nl2br)
    env.globals["plural"] = _plural
    return env


def _render_block(template: Template, name: str, context: Mapping[str, Any]) -> str:
    block: Callable[[Any], Iterator[str]] = template.blocks[name]
    return "".join(block(template.new_context(dict(context))))


def _one_line(subject: str) -> str:
    # A subject is a single header line: newlines would break the header (or inject new ones).
    return " ".join(subject.split())


def _tidy_text(text: str) -> str:
    # Only the blank lines around the block are template layout; inside, the staff member's and
    # the customer's text is kept exactly (also the "-- " signature delimiter's trailing space).
    return text.strip("\n") + "\n"


class MailTemplates:
    """Loads and renders the mail templates; templates are compiled once and cached by Jinja2."""

    def __init__(
        self,
        *,
        builtin_dir: Path,
        override_dir: Path | None = None,
        default_language: str = "pl",
    ) -> None:
        self._builtin_dir = Path(builtin_dir)
        self._default_language = default_language
        # The loader tries its search path in order, so override_dir shadows builtin_dir per file
        # (kinds and partials alike) and a missing override simply falls through to the builtin.
        search_path = [self._builtin_dir]
        if override_dir is not None:
            search_path.insert(0, Path(override_dir))
        loader = FileSystemLoader([str(path) for path in search_path], encoding="utf-8")
        self._text_env = _make_environment(loader, autoescape=False)
        self._html_env = _make_environment(loader, autoescape=True)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds in the builtin dir of the default language (each renders in any language)."""
        folder = self._builtin_dir / self._default_language
        return tuple(
            sorted(
                path.name[: -len(_TEMPLATE_SUFFIX)]
                for path in folder.glob(f"*{_TEMPLATE_SUFFIX}")
                if path.is_file() and not path.name.startswith("_")
            )
        )

    def _language(self, language: str | None) -> str:
        if not language:
            return self._default_language
        match = _LANGUAGE_RE.match(language.strip().lower())
        return match.group(1) if match else self._default_language

    def _candidates(self, kind: str, language: str | None) -> list[str]:
        names = [f"{self._language(language)}/{kind}{_TEMPLATE_SUFFIX}"]
        fallback = f"{self._default_language}/{kind}{_TEMPLATE_SUFFIX}"
        if fallback not in names:
            names.append(fallback)
        return names

    def render(self, kind: str, *, language: str | None, context: Mapping[str, Any]) -> RenderedMail:
        """Render one mail; a missing context variable raises jinja2.UndefinedError."""
        if not _KIND_RE.match(kind):
            # Also rejects "_partials" and anything path-like.
            raise MailTemplateError(f"not a mail kind: {kind!r}")
        names = self._candidates(kind, language)
        try:
            text_template = self._text_env.select_template(names)
        except TemplateNotFound as exc:  # TemplatesNotFound (select_template) is a subclass
            raise MailTemplateError(f"no template for kind {kind!r} (tried {', '.join(names)})") from exc
        for required in ("subject", "text"):
            if required not in text_template.blocks:
                raise MailTemplateError(f"{text_template.filename} has no {{% block {required} %}}")
        subject = _one_line(_render_block(text_template, "subject", context))
        text = _tidy_text(_render_block(text_template, "text", context))

        html: str | None = None
        if "html" in text_template.blocks:
            # The escaping Environment compiles the very same file: select by its resolved name so
            # the subject/text and the HTML never come from two different files.
            html_template = self._html_env.get_template(text_template.name or names[0])
            html = _render_block(html_template, "html", context).strip() + "\n"
        return RenderedMail(subject=subject, text=text, html=html)
