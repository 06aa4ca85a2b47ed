"""Plain text from mail bodies: RFC 3676 format=flowed unwrapped, HTML turned into readable text."""

from __future__ import annotations

import re
from html.parser import HTMLParser


def unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 format=flowed soft line breaks, keeping quote depth."""
    out: list[str] = []
    current: str | None = None
    current_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if current is not None and depth == current_depth:
            current += content
        else:
            if current is not None:
                out.append(_quoted(current, current_depth))
            current, current_depth = content, depth
        if not flowed:
            out.append(_quoted(current, current_depth))
            current = None
    if current is not None:
        out.append(_quoted(current, current_depth))
    return "\n".join(out)


def _quoted(content: str, depth: int) -> str:
    return (">" * depth + " " + content) if depth else content


class _HtmlText(HTMLParser):
    _SKIP = frozenset({"script", "style", "title", "template"})
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "tr",
            "table",
            "ul",
            "ol",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
            "hr",
            "section",
            "article",
            "header",
            "footer",
            "dt",
            "dd",
            "address",
            "body",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "li":
            self.chunks.append("\n- ")
        elif tag in ("td", "th"):
            self.chunks.append(" ")
        elif tag in self._BLOCK:
            self.chunks.append("\n")
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK and tag != "br":
            self.chunks.append("\n")
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        self.chunks.append(data if self._pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body: scripts and styles dropped, blocks on their own lines."""
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; this guards only against the truly unexpected
        pass
    text = "".join(parser.chunks).replace("\xa0", " ")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
