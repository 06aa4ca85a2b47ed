"""The panel form as a mail producer: new messages and replies, through the one `intake.accept`.

The form's fields and files become RFC 5322 bytes (gateway.panel.compose) and are journaled with
the verified panel identity in the meta, exactly like SMTP mail with its envelope. The route
answers 201 with the case number once the pipeline has placed the message (it normally takes
well under a second; past a bound it answers 202, the message being safe in the journal). A
file over the limit refuses the whole submission with 413 before anything is written.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from gateway.casetag import tagged_subject
from gateway.intake import JournalUnavailable
from gateway.panel.access import (
    NOT_FOUND,
    UNAUTHORISED,
    CaseNumber,
    Login,
    case_in_scope,
    login_services,
)
from gateway.panel.auth import PanelIdentity
from gateway.panel.compose import PanelMail, compose
from gateway.panel.deps import Deps, PanelDeps
from gateway.panel.models import (
    CONTACT_KINDS,
    FileTooLargeProblem,
    Problem,
    Submitted,
    ValidationProblem,
)
from gateway.panel.upload import (
    BodyTooLarge,
    FileTooLarge,
    FormError,
    SubmittedForm,
    UnsupportedForm,
    read_form,
)
from store import cases, directory, journal, processed
from store import panel as panel_store
from store.db import reading
from store.models import Case, Contact

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PLACEMENT_TIMEOUT_SECONDS = 20.0  # the pipeline places a message in well under a second
NEW_MESSAGE_FIELDS = ("category", "service", "subject", "body")

router = APIRouter(prefix="/api", responses=UNAUTHORISED)


def _form_schema(required: Sequence[str], properties: dict[str, Any]) -> dict[str, Any]:
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    schema = {"type": "object", "required": list(required), "properties": {**properties, "files": files}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_TEXT = {"type": "string", "minLength": 1}
NEW_MESSAGE_BODY = _form_schema(
    NEW_MESSAGE_FIELDS,
    {
        "category": {**_TEXT, "maxLength": 100},
        "service": {**_TEXT, "maxLength": 100},
        "subject": {**_TEXT, "maxLength": 500},
        "body": _TEXT,
        "sender": {"type": "string", "enum": list(CONTACT_KINDS)},
    },
)
REPLY_BODY = _form_schema(("body",), {"body": _TEXT})
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Submitted, "description": "Journaled, not placed in a case yet (or quarantined)"},
    400: {"model": Problem, "description": "The body is not a readable form"},
    413: {"model": FileTooLargeProblem, "description": "A file is over the attachment limit; nothing stored"},
    415: {"model": Problem, "description": "Not a form"},
    422: {"model": ValidationProblem, "description": "Required fields missing or invalid, named; nothing stored"},
    503: {"model": Problem, "description": "The journal cannot be written; nothing stored"},
}


async def _read_form(request: Request, deps: PanelDeps) -> SubmittedForm:
    """The submitted form, or the HTTP error that tells the client why it was refused."""
    limit = deps.settings.max_attachment_bytes
    try:
        return await read_form(
            request,
            file_field="files",
            max_file_bytes=limit,
            max_request_bytes=max(deps.settings.smtp_max_message_bytes, limit + 1024 * 1024),
        )
    except FileTooLarge as error:
        raise FileRefused(error) from error
    except BodyTooLarge as error:
        raise HTTPException(413, f"{error.what} is larger than the limit of {error.limit} bytes") from error
    except UnsupportedForm as error:
        raise HTTPException(415, str(error)) from error
    except FormError as error:
        raise HTTPException(400, str(error)) from error


class FileRefused(Exception):
    """A file over the limit: answered as 413 with the file's name, its size and the limit."""

    def __init__(self, error: FileTooLarge) -> None:
        super().__init__(str(error))
        self.problem = FileTooLargeProblem(
            detail=f"the file {error.filename!r} is larger than the limit of {error.limit} bytes per attachment",
            filename=error.filename,
            size=error.size,
            limit=error.limit,
        )


async def file_refused_handler(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FileRefused)
    return JSONResponse(error.problem.model_dump(), status_code=413)


def _missing(form: SubmittedForm, required: Sequence[str]) -> None:
    """422 naming every required field that is absent or blank, in FastAPI's own error shape."""
    missing = [name for name in required if not form.fields.get(name, "").strip()]
    if missing:
        raise HTTPException(
            422, [{"type": "missing", "loc": ["body", name], "msg": "Field required"} for name in missing]
        )


def _invalid(name: str, message: str) -> HTTPException:
    return HTTPException(422, [{"type": "value_error", "loc": ["body", name], "msg": message}])


def _check_new_message(form: SubmittedForm) -> None:
    _missing(form, NEW_MESSAGE_FIELDS)
    category = form.fields["category"].strip()
    if len(category) > 100 or _CONTROL.search(category):
        raise _invalid("category", "at most 100 characters, no control characters")
    sender = form.fields.get("sender", "").strip()
    if sender and sender not in CONTACT_KINDS:
        raise _invalid("sender", f"one of {', '.join(CONTACT_KINDS)}")


def _sender(contacts: Sequence[Contact], kind: str, identity: PanelIdentity) -> tuple[str, str]:
    """(name, address) the mail is written from: the chosen contact, or the login itself."""
    if kind:
        chosen = next((c for c in contacts if c.kind == kind), None)
        if chosen is None:
            raise _invalid("sender", f"the account has no {kind} contact")
        return chosen.name, chosen.email
    own = next((c for c in contacts if c.email == identity.sub), None)
    return (own.name if own else ""), identity.sub


def _new_message_author(engine: Engine, identity: PanelIdentity, form: SubmittedForm) -> tuple[str, str]:
    """Check the service is the login's to write about; the author of the mail."""
    service_id = form.fields["service"].strip()
    with reading(engine) as session:
        services = directory.account_services(session=session, account_id=identity.account)
        contacts = directory.account_contacts(session=session, account_id=identity.account)
    if service_id not in {s.id for s in login_services(services, identity)}:
        raise HTTPException(404, "no such service")
    return _sender(contacts, form.fields.get("sender", "").strip(), identity)


def _reply_target(engine: Engine, identity: PanelIdentity, number: str) -> tuple[Case, list[str], str]:
    """The case (in scope), the Message-IDs to refer to, and the name of the login if it is a contact."""
    with reading(engine) as session:
        case = case_in_scope(session, identity, number)
        references = panel_store.latest_message_ids(session=session, case_id=case.id or 0)
        contacts = directory.account_contacts(session=session, account_id=identity.account)
    own = next((c for c in contacts if c.email == identity.sub), None)
    return case, references, own.name if own else ""


def _placement(deps: PanelDeps, journal_id: int) -> Submitted:
    # The journal first: once it says done, the case is committed (in the same transaction, or
    # in the one before), so reading in this order never sees "done" without its case.
    with reading(deps.journal_engine) as session:
        entry = journal.get_entry(session=session, journal_id=journal_id)
    if entry is None or entry.status in ("pending", "quarantined"):
        return Submitted(number=None, status="pending" if entry is None else entry.status)
    with reading(deps.engine) as session:
        finished = processed.get_processed(session=session, journal_id=journal_id)
        case_id = finished.case_id if finished else None
        case = cases.get_case(session=session, case_id=case_id) if case_id else None
        return Submitted(number=case.number if case else None, status=entry.status)


async def _submit(deps: PanelDeps, raw: bytes, *, sender: str, panel: dict[str, Any]) -> Submitted:
    """The one durable write, then wait (bounded) until the pipeline has placed the message."""
    meta = {"panel": panel, "mail_from": sender, "rcpt_tos": [deps.settings.support_address]}
    try:
        receipt = await deps.intake.accept(raw, source="panel", meta=meta)
    except JournalUnavailable as error:
        raise HTTPException(503, "the message could not be stored, please try again") from error
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + PLACEMENT_TIMEOUT_SECONDS, 0.01
    while True:
        placed = await asyncio.to_thread(_placement, deps, receipt.journal_id)
        if placed.status != "pending" or loop.time() >= deadline:
            return placed
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def _submitted_response(placed: Submitted) -> JSONResponse:
    return JSONResponse(placed.model_dump(), status_code=201 if placed.number else 202)


@router.post(
    "/panel/messages",
    tags=["panel"],
    status_code=201,
    response_model=Submitted,
    responses={**SUBMIT_RESPONSES, **NOT_FOUND},
    openapi_extra=NEW_MESSAGE_BODY,
)
async def post_message(request: Request, deps: Deps, identity: Login) -> JSONResponse:
    """A new case from the form, written as mail from the chosen contact (or the login)."""
    form = await _read_form(request, deps)
    _check_new_message(form)
    name, address = await asyncio.to_thread(_new_message_author, deps.engine, identity, form)
    # Encoding attachments is CPU work: off the event loop the SMTP listener shares.
    raw = await asyncio.to_thread(
        compose,
        PanelMail(
            from_name=name,
            from_address=address,
            to_address=deps.settings.support_address,
            subject=form.fields["subject"],
            body=form.fields["body"],
            files=form.files,
            message_id_domain=deps.settings.support_domain,
        ),
    )
    panel = {
        "account": identity.account,
        "service": form.fields["service"].strip(),
        "category": form.fields["category"].strip(),
        "case": None,
        "login": identity.sub,
    }
    return _submitted_response(await _submit(deps, raw, sender=address, panel=panel))


@router.post(
    "/panel/cases/{number}/replies",
    tags=["panel"],
    status_code=201,
    response_model=Submitted,
    responses={**SUBMIT_RESPONSES, **NOT_FOUND},
    openapi_extra=REPLY_BODY,
)
async def post_reply(request: Request, deps: Deps, identity: Login, number: CaseNumber) -> JSONResponse:
    """A reply into a case, written as mail from the login; it threads like any customer reply."""
    case, references, name = await asyncio.to_thread(_reply_target, deps.engine, identity, number)
    form = await _read_form(request, deps)
    _missing(form, ("body",))
    raw = await asyncio.to_thread(
        compose,
        PanelMail(
            from_name=name,
            from_address=identity.sub,
            to_address=deps.settings.support_address,
            subject=f"Re: {tagged_subject(case.number, case.subject)}",
            body=form.fields["body"],
            files=form.files,
            in_reply_to=references[-1] if references else None,
            references=references,
            message_id_domain=deps.settings.support_domain,
        ),
    )
    panel = {
        "account": identity.account,
        "service": case.service_id,
        "category": case.category,
        "case": case.number,
        "login": identity.sub,
    }
    return _submitted_response(await _submit(deps, raw, sender=identity.sub, panel=panel))
