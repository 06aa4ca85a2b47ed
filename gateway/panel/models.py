"""The panel API's JSON shapes (pydantic): what the routes answer and the directory they accept.

They are the OpenAPI description too, so the schemathesis run checks answers against them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

ContactKind = Literal["representative", "technical", "billing"]
CONTACT_KINDS: tuple[str, ...] = ("representative", "technical", "billing")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ADDRESS = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def _no_controls(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    return value.strip()


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError("not an e-mail address")
    return value.lower()


Name = Annotated[str, Field(max_length=200), AfterValidator(_no_controls)]
Identifier = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_no_controls)]
Address = Annotated[str, Field(max_length=320), AfterValidator(_no_controls), AfterValidator(_address)]


# --- the directory (PUT /api/accounts/{account}) -------------------------------------------------


class ServiceIn(BaseModel):
    id: Identifier
    name: Name = ""


class ContactIn(BaseModel):
    kind: ContactKind
    name: Name = ""
    email: Address


class AccountIn(BaseModel):
    name: Name
    language: Literal["pl", "en"] | None = None
    services: list[ServiceIn] = Field(default_factory=list, max_length=1000)
    contacts: list[ContactIn] = Field(default_factory=list, max_length=1000)

    @field_validator("services")
    @classmethod
    def _unique_service_ids(cls, services: list[ServiceIn]) -> list[ServiceIn]:
        if len({service.id for service in services}) != len(services):
            raise ValueError("service ids must be unique")
        return services


class ServiceOut(BaseModel):
    id: str
    name: str


class ContactOut(BaseModel):
    kind: str
    name: str
    email: str


class AccountOut(BaseModel):
    id: str
    name: str
    language: str | None
    services: list[ServiceOut]
    contacts: list[ContactOut]


# --- the login ------------------------------------------------------------------------------------


class Category(BaseModel):
    id: str
    name: str


class Me(BaseModel):
    login: str
    role: Literal["admin", "standard"]
    account: str
    account_name: str
    services: list[ServiceOut]  # the services this login may write about
    contacts: list[ContactOut]
    categories: list[Category]
    max_attachment_bytes: int


# --- cases ----------------------------------------------------------------------------------------


class CaseItem(BaseModel):
    number: str
    subject: str
    sender: str
    sender_name: str
    category: str | None
    service: str | None
    status: Literal["open", "answered", "closed"]
    updated_at: datetime
    answered: bool
    unread: int


class CasePage(BaseModel):
    items: list[CaseItem]
    page: int
    per_page: int
    total: int


class AttachmentOut(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    refused: bool
    reason: str | None
    inline: bool
    download_url: str | None  # signed for a while; None when the file was refused


class ThreadMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    direction: Literal["inbound", "outbound"]
    from_: str = Field(alias="from")
    to: str
    date: datetime
    subject: str
    text: str
    html: str | None  # sanitised; the text is always there as well
    auto_generated: bool
    read: bool | None  # outbound only: whether the customer marked it read
    attachments: list[AttachmentOut]


class CaseThread(CaseItem):
    messages: list[ThreadMessage]


class Submitted(BaseModel):
    """A form message or reply, journaled; `number` is its case once the pipeline has placed it."""

    number: str | None
    status: Literal["done", "duplicate", "pending", "quarantined"]


class MarkedRead(BaseModel):
    number: str
    marked: int
    unread: int


# --- errors ---------------------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str


class ValidationItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationProblem(BaseModel):
    """FastAPI's own 422 shape, also used for the form fields the routes check themselves."""

    detail: list[ValidationItem]


class FileTooLargeProblem(BaseModel):
    detail: str
    filename: str
    size: int
    limit: int
