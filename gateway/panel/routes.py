"""The customer panel's HTTP API (SPEC §8): the directory, the correspondence list and threads.

`install_panel` puts it all on the gateway's FastAPI app: these read routes, the form routes of
gateway.panel.form (new messages and replies as mail), and the reference page of
gateway.panel.page. Who may see what is decided in gateway.panel.access; every query goes
through the scoped repository functions of store.panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Response
from sqlmodel import Session

from gateway.panel import form
from gateway.panel.access import (
    NOT_FOUND,
    UNAUTHORISED,
    CaseNumber,
    Login,
    OptionalIdentity,
    System,
    case_in_scope,
    is_login,
    login_services,
    scope_of,
    unauthorised,
)
from gateway.panel.auth import PanelIdentity, check_download, sign_download
from gateway.panel.compose import media_type
from gateway.panel.deps import Deps, PanelDeps, provide
from gateway.panel.models import (
    AccountIn,
    AccountOut,
    AttachmentOut,
    CaseItem,
    CasePage,
    CaseThread,
    Category,
    ContactOut,
    MarkedRead,
    Me,
    Problem,
    ServiceOut,
    ThreadMessage,
)
from gateway.panel.page import install_page
from gateway.panel.sanitise import sanitise_html
from store import cases, directory
from store import panel as panel_store
from store.db import reading, transaction
from store.models import Attachment, Case, Contact, Message, Service, utcnow

PER_PAGE = 25
MAX_PAGE = 1_000_000
MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL)
CATEGORIES = (
    Category(id="general", name="Sprawy ogólne"),
    Category(id="email", name="Poczta e-mail"),
    Category(id="domains", name="Domeny"),
    Category(id="hosting", name="Hosting i strony WWW"),
    Category(id="servers", name="Serwery"),
    Category(id="billing", name="Faktury i płatności"),
)
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}

router = APIRouter(prefix="/api", responses=UNAUTHORISED)


# --- the directory --------------------------------------------------------------------------------


def _account_out(
    account_id: str, name: str, language: str | None, services: Sequence[Service], contacts: Sequence[Contact]
) -> AccountOut:
    return AccountOut(
        id=account_id,
        name=name,
        language=language,
        services=[ServiceOut(id=s.id, name=s.name) for s in services],
        contacts=[ContactOut(kind=c.kind, name=c.name, email=c.email) for c in contacts],
    )


@router.put(
    "/accounts/{account}",
    tags=["directory"],
    response_model=AccountOut,
    responses={
        400: {"model": Problem, "description": "The body cannot be read as JSON"},
        409: {"model": Problem, "description": "A service id belongs to another account"},
    },
)
def put_account(
    deps: Deps,
    account: Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f/]+$")],
    body: AccountIn,
    _: System,
) -> AccountOut:
    """Create or replace an account: its name, language, services and contacts (role `system`)."""
    service_ids = [service.id for service in body.services]
    with transaction(deps.engine) as session:
        taken = panel_store.foreign_services(session=session, account_id=account, service_ids=service_ids)
        if taken:
            raise HTTPException(409, f"service ids already belong to another account: {', '.join(taken)}")
        directory.replace_account(
            session=session,
            account_id=account,
            name=body.name,
            language=body.language,
            services=[(s.id, s.name) for s in body.services],
            contacts=[(c.kind, c.name, c.email) for c in body.contacts],
        )
        session.flush()
        return _account_out(
            account,
            body.name,
            body.language,
            directory.account_services(session=session, account_id=account),
            directory.account_contacts(session=session, account_id=account),
        )


# --- the login ------------------------------------------------------------------------------------


@router.get("/panel/me", tags=["panel"], response_model=Me)
def get_me(deps: Deps, identity: Login) -> Me:
    """The login, its account, the services it may write about, the contacts it may write as."""
    with reading(deps.engine) as session:
        account = directory.get_account(session=session, account_id=identity.account)
        services = directory.account_services(session=session, account_id=identity.account)
        contacts = directory.account_contacts(session=session, account_id=identity.account)
    return Me(
        login=identity.sub,
        role=identity.role,
        account=identity.account,
        account_name=account.name if account is not None else "",
        services=[ServiceOut(id=s.id, name=s.name) for s in login_services(services, identity)],
        contacts=[ContactOut(kind=c.kind, name=c.name, email=c.email) for c in contacts],
        categories=list(CATEGORIES),
        max_attachment_bytes=deps.settings.max_attachment_bytes,
    )


# --- the correspondence list and threads ----------------------------------------------------------


def _case_item(case: Case, *, unread: int) -> dict[str, Any]:
    return {
        "number": case.number,
        "subject": case.subject,
        "sender": case.requester,
        "sender_name": case.requester_name,
        "category": case.category,
        "service": case.service_id,
        "status": case.status,
        "updated_at": case.updated_at,
        "answered": case.status == "answered",
        "unread": unread,
    }


@router.get("/panel/cases", tags=["panel"], response_model=CasePage)
def list_cases(
    deps: Deps,
    identity: Login,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = PER_PAGE,
) -> CasePage:
    """The correspondence list, most recently updated first."""
    scope = scope_of(identity)
    with reading(deps.engine) as session:
        found = panel_store.list_cases(session=session, scope=scope, offset=(page - 1) * per_page, limit=per_page)
        unread = panel_store.unread_counts(session=session, case_ids=[case.id or 0 for case in found])
        total = panel_store.count_cases(session=session, scope=scope)
    items = [CaseItem(**_case_item(case, unread=unread.get(case.id or 0, 0))) for case in found]
    return CasePage(items=items, page=page, per_page=per_page, total=total)


def _download_url(secret: str, attachment: Attachment) -> str | None:
    if attachment.refused or attachment.sha256 is None or attachment.id is None:
        return None
    signature = sign_download(secret=secret, attachment_id=attachment.id)
    return f"/api/panel/attachments/{attachment.id}?sig={signature}"


def _attachment_out(attachment: Attachment, url: str | None) -> AttachmentOut:
    return AttachmentOut(
        id=attachment.id or 0,
        filename=attachment.filename,
        content_type=attachment.content_type,
        size=attachment.size,
        refused=attachment.refused,
        reason=attachment.reason,
        inline=attachment.inline,
        download_url=url,
    )


def _thread_message(message: Message, attachments: list[Attachment], secret: str) -> ThreadMessage:
    urls = {attachment.id: _download_url(secret, attachment) for attachment in attachments}
    inline_urls = {
        a.content_id.strip("<> ").lower(): url for a in attachments if a.content_id and (url := urls[a.id]) is not None
    }
    return ThreadMessage(
        id=message.id or 0,
        direction=message.direction,
        from_=message.from_header,
        to=message.to_header,
        date=message.date or message.created_at,
        subject=message.subject,
        text=message.text,
        html=sanitise_html(message.html, inline_urls=inline_urls) if message.html else None,
        auto_generated=message.auto_generated,
        read=(message.read_at is not None) if message.direction == "outbound" else None,
        attachments=[_attachment_out(a, urls[a.id]) for a in attachments],
    )


@router.get("/panel/cases/{number}", tags=["panel"], response_model=CaseThread, responses=NOT_FOUND)
def get_case(deps: Deps, identity: Login, number: CaseNumber) -> CaseThread:
    """The whole thread of one case, oldest message first; internal notes are never shown."""
    with reading(deps.engine) as session:
        case = case_in_scope(session, identity, number)
        messages = panel_store.visible_messages(session=session, case_id=case.id or 0)
        by_message = cases.message_attachments(session=session, message_ids=[m.id or 0 for m in messages])
        unread = panel_store.unread_counts(session=session, case_ids=[case.id or 0]).get(case.id or 0, 0)
    thread = [_thread_message(m, by_message.get(m.id or 0, []), deps.panel_secret) for m in messages]
    return CaseThread(**_case_item(case, unread=unread), messages=thread)


@router.post("/panel/cases/{number}/read", tags=["panel"], response_model=MarkedRead, responses=NOT_FOUND)
def mark_read(deps: Deps, identity: Login, number: CaseNumber) -> MarkedRead:
    """Mark every answer in the case as read by the customer."""
    with transaction(deps.engine) as session:
        case = case_in_scope(session, identity, number)
        marked = panel_store.mark_read(session=session, case_id=case.id or 0, now=utcnow())
    return MarkedRead(number=case.number, marked=marked, unread=0)


# --- attachments ----------------------------------------------------------------------------------


def _content_disposition(attachment: Attachment, content_type: str) -> str:
    kind = "inline" if content_type in INLINE_IMAGE_TYPES else "attachment"
    fallback = attachment.filename.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(attachment.filename, safe='')}"


def _attachment_response(attachment: Attachment, content: bytes) -> Response:
    content_type = "/".join(media_type(attachment.content_type))
    headers = {
        "Content-Disposition": _content_disposition(attachment, content_type),
        "X-Content-Type-Options": "nosniff",
        # Whatever the file is, it never runs as a page of ours.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=3600",
    }
    return Response(content, media_type=content_type, headers=headers)


def _find_attachment(
    session: Session, attachment_id: int, identity: PanelIdentity | None, signed: bool
) -> Attachment | None:
    if signed:
        return panel_store.get_linked_attachment(session=session, attachment_id=attachment_id)
    assert identity is not None
    return panel_store.get_attachment(session=session, scope=scope_of(identity), attachment_id=attachment_id)


@router.get(
    "/panel/attachments/{attachment_id}",
    tags=["panel"],
    response_class=Response,
    responses={
        200: {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}, "description": "The file"},
        **NOT_FOUND,
    },
)
def download_attachment(
    deps: Deps,
    attachment_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    identity: OptionalIdentity,
    sig: Annotated[str | None, Query(max_length=100, description="Signature of a download link")] = None,
) -> Response:
    """Download one attachment: with a login's token (scoped), or through a signed download link."""
    signed = sig is not None and check_download(secret=deps.panel_secret, attachment_id=attachment_id, signature=sig)
    if not signed and not is_login(identity):
        raise unauthorised()
    with reading(deps.engine) as session:
        attachment = _find_attachment(session, attachment_id, identity, signed)
        content = None
        if attachment is not None and attachment.sha256 is not None:
            content = deps.blobs.get(session=session, sha256=attachment.sha256)
    if attachment is None or content is None:
        raise HTTPException(404, "no such attachment")
    return _attachment_response(attachment, content)


# --- wiring ---------------------------------------------------------------------------------------


def add_panel_routes(app: FastAPI) -> None:
    """The panel API and the reference page on `app`; what they work with comes from `provide`."""
    app.include_router(router)
    app.include_router(form.router)
    app.add_exception_handler(form.FileRefused, form.file_refused_handler)
    install_page(app)


def install_panel(app: FastAPI, deps: PanelDeps) -> None:
    """Mount the panel on the gateway's FastAPI app with everything it works with."""
    provide(app, deps)
    add_panel_routes(app)
