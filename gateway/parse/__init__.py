"""The parser room: raw message bytes -> `ParsedMessage` (headers and the requester, MIME walk, body
text and HTML, attachments with their names and bytes, delivery reports, charsets, format=flowed,
uuencode, winmail.dat, a content digest), within a `ParseBudget`. `parse_message` never raises,
whatever the bytes: what cannot be read is degraded and recorded as a defect, what is past a budget
is recorded as not unpacked, and every text field is one a database can store. No database, no
settings object, no I/O: this room may import the standard library, its own modules and its parsing
libraries (tnefparse, charset-normalizer), never another gateway room; the rest of the gateway
imports it only through the names re-exported here.
"""

from gateway.parse.budget import DEFAULT_BUDGET, ParseBudget
from gateway.parse.model import DeliveryReport, ParsedAttachment, ParsedMessage
from gateway.parse.parser import parse_message
from gateway.parse.text import html_to_text

__all__ = [
    "DEFAULT_BUDGET",
    "DeliveryReport",
    "ParseBudget",
    "ParsedAttachment",
    "ParsedMessage",
    "html_to_text",
    "parse_message",
]
