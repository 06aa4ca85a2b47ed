"""OAuth2 access tokens for a mailbox: refreshed before they expire, rotated refresh tokens kept.

The mailbox's settings give a token endpoint, a client id/secret and a refresh token. Each refresh
(RFC 6749 §6) may return a new refresh token and retire the old one (Microsoft 365 and most
identity providers rotate); the newest one is written to the database before it is used, so a
restart or another instance continues from it instead of from the retired one in the settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.settings import MailboxSettings
from store import imap_state
from store.db import transaction

log = logging.getLogger(__name__)

# Renew when this much of the token's life is left (a quarter of it for short-lived tokens), so a
# login never presents a token that expires on the way.
REFRESH_MARGIN_SECONDS = 300.0
# Providers that omit expires_in: assume an hour, the common default.
DEFAULT_LIFETIME_SECONDS = 3600.0
HTTP_TIMEOUT_SECONDS = 30.0


class TokenRefreshFailed(Exception):
    """The token endpoint did not give us an access token (revoked grant, wrong client, unreachable)."""


@dataclass(frozen=True)
class AccessToken:
    value: str
    refresh_at: float  # clock time after which a login should use a fresh token
    expires_at: float


class OAuthTokens:
    """The current access token of one mailbox, refreshing it through the token endpoint as needed."""

    def __init__(
        self, mailbox: MailboxSettings, *, engine: Engine, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._mailbox = mailbox
        self._engine = engine
        self._clock = clock
        self._current: AccessToken | None = None

    def seconds_until_refresh(self) -> float | None:
        """How long the current token may still be used for a new login (None: no token yet)."""
        if self._current is None:
            return None
        return self._current.refresh_at - self._clock()

    def invalidate(self) -> None:
        """The server refused the token: get a new one before the next login."""
        self._current = None

    async def access_token(self) -> str:
        current = self._current
        if current is None or self._clock() >= current.refresh_at:
            current = await asyncio.to_thread(self._refresh)
            self._current = current
        return current.value

    # --- the refresh, in a thread: it does HTTP and database work ----------------------------------

    def _seed(self) -> str:
        configured = self._mailbox.resolved_refresh_token()
        return hashlib.sha256(configured.encode()).hexdigest()[:32]

    def _refresh_token(self) -> str:
        seed = self._seed()
        with transaction(self._engine) as session:
            stored = imap_state.get_refresh_token(session=session, mailbox=self._mailbox.name)
        if stored is not None and stored.seed == seed:
            return stored.refresh_token
        return self._mailbox.resolved_refresh_token()

    def _refresh(self) -> AccessToken:
        refresh_token = self._refresh_token()
        if not refresh_token:
            raise TokenRefreshFailed("no refresh token configured")
        fields = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self._mailbox.client_id,
        }
        secret = self._mailbox.resolved_client_secret()
        if secret:
            fields["client_secret"] = secret
        if self._mailbox.scope:
            fields["scope"] = self._mailbox.scope
        started = self._clock()
        answer = _post_form(self._mailbox.token_endpoint, fields)
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenRefreshFailed("token endpoint answered without an access_token")
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != refresh_token:
            # Stored before the access token is used: the old refresh token may be dead already.
            with transaction(self._engine) as session:
                imap_state.save_refresh_token(
                    session=session, mailbox=self._mailbox.name, seed=self._seed(), refresh_token=rotated
                )
            log.info("mailbox %s: OAuth2 refresh token rotated and stored", self._mailbox.name)
        lifetime = _lifetime(answer.get("expires_in"))
        margin = min(REFRESH_MARGIN_SECONDS, lifetime / 4)
        return AccessToken(value=access, refresh_at=started + lifetime - margin, expires_at=started + lifetime)


def _lifetime(value: object) -> float:
    if not isinstance(value, int | float | str):
        return DEFAULT_LIFETIME_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_LIFETIME_SECONDS
    return seconds if seconds > 0 else DEFAULT_LIFETIME_SECONDS


def _post_form(url: str, fields: dict[str, str]) -> dict[str, object]:
    """POST application/x-www-form-urlencoded, return the JSON object; errors as TokenRefreshFailed."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise TokenRefreshFailed(
            f"token endpoint refused the refresh: HTTP {error.code} {_oauth_error(error)}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise TokenRefreshFailed(f"token endpoint unreachable: {error}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise TokenRefreshFailed("token endpoint answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise TokenRefreshFailed("token endpoint answered something that is not a JSON object")
    return answer


def _oauth_error(error: urllib.error.HTTPError) -> str:
    """`invalid_grant: Token has been revoked` from an RFC 6749 §5.2 error body, if there is one."""
    try:
        answer = json.loads(error.read())
    except Exception:
        return ""
    if not isinstance(answer, dict):
        return ""
    parts = [str(answer.get(key)) for key in ("error", "error_description") if answer.get(key)]
    return ": ".join(parts)
