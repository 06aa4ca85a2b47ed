"""The panel's identity: HS256 JWTs signed with GATEWAY_PANEL_SECRET (SPEC §8 claims)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import jwt

ROLES = ("admin", "standard", "system")


class InvalidToken(Exception):
    """Missing, expired, forged or incomplete: the caller answers 401 and reveals nothing."""


@dataclass(frozen=True)
class PanelIdentity:
    sub: str  # the login's e-mail address
    account: str
    role: str  # admin | standard | system
    service: str | None  # required for standard logins


def issue_token(
    *, secret: str, sub: str, account: str, role: str, service: str | None = None, hours: float = 12.0
) -> str:
    claims = {
        "sub": sub,
        "account": account,
        "role": role,
        "exp": datetime.now(timezone.utc) + timedelta(hours=hours),
    }
    if service is not None:
        claims["service"] = service
    return jwt.encode(claims, secret, algorithm="HS256")


def read_token(token: str, *, secret: str) -> PanelIdentity:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "account", "role"]}
        )
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    role = claims.get("role")
    service = claims.get("service")
    if role not in ROLES or not isinstance(claims.get("account"), str):
        raise InvalidToken("unknown role or account")
    if role == "standard" and not service:
        raise InvalidToken("a standard login needs a service")
    return PanelIdentity(sub=str(claims["sub"]).lower(), account=claims["account"], role=role,
                         service=str(service) if service else None)
