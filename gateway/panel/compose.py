"""The panel form as a mail producer: fields and files -> the bytes of a real RFC 5322 message.

What the customer typed becomes ordinary mail (From the chosen contact or the login, To the
support address), so it enters the pipeline exactly like SMTP mail and staff read it like any
other. Nothing here touches the database or the network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid

from gateway.panel.upload import UploadedFile

MAX_SUBJECT_CHARS = 500
# C0 controls other than tab and newline, and DEL: they have no business in a typed message
# (and PostgreSQL refuses NUL in text columns).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOKEN = r"[a-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")


@dataclass(frozen=True)
class PanelMail:
    from_name: str
    from_address: str
    to_address: str
    subject: str
    body: str
    files: Sequence[UploadedFile] = ()
    in_reply_to: str | None = None  # Message-ID without brackets
    references: Sequence[str] = ()
    message_id_domain: str = "localhost"


def clean_text(value: str) -> str:
    """Typed text with normalised newlines and without control characters."""
    return _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


def clean_subject(value: str) -> str:
    """One line: a header must not carry a newline (that would be header injection)."""
    return " ".join(clean_text(value).split())[:MAX_SUBJECT_CHARS]


def safe_filename(name: str) -> str:
    """The last path component only (some browsers send a full path), never empty."""
    name = clean_subject(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name if name not in ("", ".", "..") else "zalacznik"


def media_type(declared: str) -> tuple[str, str]:
    """A well-formed (maintype, subtype) for a declared Content-Type, else application/octet-stream."""
    match = _MEDIA_TYPE.match(declared.partition(";")[0].strip().lower())
    # message/* and multipart/* may not be base64-encoded, and their structure is not ours to vouch for.
    if match is None or match.group(1) in ("message", "multipart"):
        return "application", "octet-stream"
    return match.group(1), match.group(2)


def _policy(mail: PanelMail) -> policy.EmailPolicy[EmailMessage]:
    # An internationalised address can only be written with SMTPUTF8; plain ASCII stays classic.
    return policy.SMTP if mail.from_address.isascii() else policy.SMTPUTF8


def compose(mail: PanelMail) -> bytes:
    message = EmailMessage(policy=_policy(mail))
    message["From"] = formataddr((clean_subject(mail.from_name), mail.from_address))
    message["To"] = mail.to_address
    message["Subject"] = clean_subject(mail.subject)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(idstring="panel", domain=mail.message_id_domain)
    if mail.in_reply_to:
        message["In-Reply-To"] = f"<{mail.in_reply_to}>"
        chain = dict.fromkeys([*mail.references, mail.in_reply_to])
        message["References"] = " ".join(f"<{mid}>" for mid in chain)
    message.set_content(clean_text(mail.body))
    for upload in mail.files:
        maintype, subtype = media_type(upload.content_type)
        message.add_attachment(
            upload.content, maintype=maintype, subtype=subtype, filename=safe_filename(upload.filename)
        )
    return message.as_bytes()
