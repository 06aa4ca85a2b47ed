"""Who is calling the panel API and what they may see: token dependencies and scope (SPEC §8).

A missing, expired or forged token, or one of the wrong role, is 401. Anything outside a login's
scope is answered exactly like something that does not exist: 404, never 403, so nobody learns
that a case exists. An `admin` login's scope is its account, a `standard` login's its service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from gateway.panel.auth import InvalidToken, PanelIdentity, read_token
from gateway.panel.deps import Deps
from gateway.panel.models import Problem
from store import panel as panel_store
from store.models import Case, Service
from store.panel import Scope

LOGIN_ROLES = ("admin", "standard")
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Not found, or outside the login's scope"}
}
UNAUTHORISED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing, expired or forged token"}
}

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="panelToken",
    description="HS256 JWT signed with GATEWAY_PANEL_SECRET; claims sub, account, role, service, exp.",
)


def unauthorised() -> HTTPException:
    return HTTPException(401, "a valid panel token is required", headers={"WWW-Authenticate": "Bearer"})


def token_identity(
    deps: Deps, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> PanelIdentity | None:
    """The verified identity of the bearer token, or None when there is no valid one."""
    if credentials is None:
        return None
    try:
        return read_token(credentials.credentials, secret=deps.panel_secret)
    except InvalidToken:
        return None


def is_login(identity: PanelIdentity | None) -> bool:
    return identity is not None and identity.role in LOGIN_ROLES


def _require_login(identity: Annotated[PanelIdentity | None, Depends(token_identity)]) -> PanelIdentity:
    """A customer's login (admin or standard); the panel system's own token is not one."""
    if identity is None or not is_login(identity):
        raise unauthorised()
    return identity


def _require_system(identity: Annotated[PanelIdentity | None, Depends(token_identity)]) -> PanelIdentity:
    if identity is None or identity.role != "system":
        raise unauthorised()
    return identity


Login = Annotated[PanelIdentity, Depends(_require_login)]
System = Annotated[PanelIdentity, Depends(_require_system)]
OptionalIdentity = Annotated[PanelIdentity | None, Depends(token_identity)]
CaseNumber = Annotated[str, Path(min_length=1, max_length=20)]


def scope_of(identity: PanelIdentity) -> Scope:
    service = identity.service if identity.role == "standard" else None
    return Scope(account_id=identity.account, service_id=service)


def case_in_scope(session: Session, identity: PanelIdentity, number: str) -> Case:
    case = panel_store.get_case(session=session, scope=scope_of(identity), number=number)
    if case is None:
        raise HTTPException(404, "no such case")
    return case


def login_services(services: Sequence[Service], identity: PanelIdentity) -> list[Service]:
    """The account's services this login may read and write about."""
    return [s for s in services if identity.role == "admin" or s.id == identity.service]
