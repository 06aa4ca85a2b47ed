"""Sanitise a message's HTML for the panel (nh3): no script, no event handlers, no remote loads.

Tags and attributes come from an allow-list; inline styles keep only properties that cannot
fetch anything (no `background`, no `list-style`, nothing that takes a `url()`). An image may
only point at one of the message's own inline parts: `cid:` references are rewritten to that
attachment's download URL and every other `src` is dropped, so opening a message never tells a
tracker that it was read. Links stay clickable and open in a new tab without a referrer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import nh3

_TAGS = (nh3.ALLOWED_TAGS - {"area", "map"}) | {"font", "tfoot"}
_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attributes) for tag, attributes in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "title", "dir", "lang", "align", "valign", "width", "height"},
    "font": {"color", "face", "size"},
    "table": {"border", "cellpadding", "cellspacing", "summary", "align", "width"},
    "td": {"colspan", "rowspan", "align", "valign", "width", "bgcolor", "headers"},
    "th": {"colspan", "rowspan", "align", "valign", "width", "bgcolor", "scope", "headers"},
}
_STYLE_PROPERTIES = {
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "text-align",
    "text-decoration",
    "text-indent",
    "text-transform",
    "line-height",
    "letter-spacing",
    "white-space",
    "vertical-align",
    "direction",
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-color",
    "border-style",
    "border-width",
    "border-collapse",
    "border-spacing",
    "border-radius",
    "width",
    "height",
    "max-width",
    "min-width",
    "display",
}
_URL_ATTRIBUTES = {"src", "href", "cite"}
# "cid" is let through the scheme filter only so that the attribute filter can resolve it.
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid"}


def _attribute_filter(inline_urls: Mapping[str, str]) -> Callable[[str, str, str], str | None]:
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute not in _URL_ATTRIBUTES:
            return value
        is_cid = value[:4].lower() == "cid:"
        if tag == "img" and attribute == "src":
            return inline_urls.get(value[4:].strip("<> ").lower()) if is_cid else None
        return None if is_cid else value

    return keep


def sanitise_html(html: str, *, inline_urls: Mapping[str, str]) -> str:
    """Safe HTML; `inline_urls` maps a lower-case Content-ID to the URL that serves that part."""
    return nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags={"script", "style", "title", "head"},
        attributes=_ATTRIBUTES,
        attribute_filter=_attribute_filter(inline_urls),
        url_schemes=_URL_SCHEMES,
        filter_style_properties=_STYLE_PROPERTIES,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
