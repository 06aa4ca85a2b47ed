"""The panel's identity: HS256 JWTs signed with GATEWAY_PANEL_SECRET (SPEC §8 claims).

Also the time-limited signatures of attachment download links handed to a login in scope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
        "exp": datetime.now(UTC) + timedelta(hours=hours),
    }
    if service is not None:
        claims["service"] = service
    return jwt.encode(claims, secret, algorithm="HS256")


def read_token(token: str, *, secret: str) -> PanelIdentity:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "account", "role"]})
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    role = claims.get("role")
    service = claims.get("service")
    if role not in ROLES or not isinstance(claims.get("account"), str):
        raise InvalidToken("unknown role or account")
    if role == "standard" and not service:
        raise InvalidToken("a standard login needs a service")
    return PanelIdentity(
        sub=str(claims["sub"]).lower(), account=claims["account"], role=role, service=str(service) if service else None
    )


# --- signed download links --------------------------------------------------------------------
# An <img src> or a plain link cannot carry the Authorization header, so the thread hands out
# attachment URLs signed for a limited time. Only a login that may see the attachment ever gets
# one; the key is derived from the panel secret so a link signature is never a valid JWT MAC.


def _download_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"panel attachment download links", hashlib.sha256).digest()


def _download_mac(secret: str, attachment_id: int, expires: int) -> str:
    digest = hmac.new(_download_key(secret), f"{attachment_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def sign_download(*, secret: str, attachment_id: int, ttl_seconds: int = 12 * 3600) -> str:
    """A signature `<expiry>.<mac>` for the URL of one attachment."""
    expires = int(time.time()) + ttl_seconds
    return f"{expires}.{_download_mac(secret, attachment_id, expires)}"


def check_download(*, secret: str, attachment_id: int, signature: str) -> bool:
    expires_text, _, mac = signature.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or int(expires_text) < time.time():
        return False
    return hmac.compare_digest(mac, _download_mac(secret, attachment_id, int(expires_text)))
