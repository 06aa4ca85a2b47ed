"""A tiny OAuth2 provider for the tests: a token endpoint that rotates refresh tokens and an RFC 7662
introspection endpoint for Dovecot's oauth2 passdb, on a loopback port of its own (bound to port 0).

Rotation is strict, as Microsoft 365 and most identity providers do it: each refresh returns a new
refresh token and retires the one presented, so a client that does not keep the newest one is
locked out at its next refresh. `revoke()` withdraws the grant: every token dies at once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class OAuthProvider:
    client_id: str = "gateway-client"
    client_secret: str = "gateway-client-secret"
    user: str = "support"
    lifetime_seconds: float = 3.0
    refresh_tokens_issued: list[str] = field(default_factory=list)
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    refreshes: int = 0  # successful refreshes
    refused_refreshes: list[str] = field(default_factory=list)  # the error code of each refused one
    introspections: list[bool] = field(default_factory=list)  # the "active" answer of each
    revoked: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.refresh_tokens_issued.append("initial-" + secrets.token_urlsafe(12))

    @property
    def initial_refresh_token(self) -> str:
        return self.refresh_tokens_issued[0]

    @property
    def current_refresh_token(self) -> str:
        return self.refresh_tokens_issued[-1]

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_endpoint(self) -> str:
        return self.base_url + "/token"

    @property
    def introspection_url(self) -> str:
        return self.base_url + "/introspect"

    def forget_access_tokens(self) -> None:
        """Access tokens die early (a password change, an admin's sign-out); refreshing still works."""
        with self._lock:
            self.access_tokens.clear()

    def revoke(self) -> None:
        with self._lock:
            self.revoked = True
            self.access_tokens.clear()

    # --- the two endpoints --------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self._lock:
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                self.refused_refreshes.append("invalid_client")
                return 401, {"error": "invalid_client"}
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            if self.revoked or form.get("refresh_token") != self.current_refresh_token:
                self.refused_refreshes.append("invalid_grant")
                reason = "Token has been revoked" if self.revoked else "refresh token was rotated or is unknown"
                return 400, {"error": "invalid_grant", "error_description": reason}
            access, rotated = "at-" + secrets.token_urlsafe(16), "rt-" + secrets.token_urlsafe(16)
            self.access_tokens[access] = time.monotonic() + self.lifetime_seconds
            self.refresh_tokens_issued.append(rotated)
            self.refreshes += 1
            return 200, {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.lifetime_seconds,
                "refresh_token": rotated,
            }

    def introspect(self, form: dict[str, str]) -> dict[str, object]:
        with self._lock:
            expiry = self.access_tokens.get(form.get("token", ""))
            active = expiry is not None and time.monotonic() < expiry
            self.introspections.append(active)
            return {"active": True, "username": self.user} if active else {"active": False}

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path == "/token":
                    status, body = provider.token(form)
                elif self.path == "/introspect":
                    status, body = 200, provider.introspect(form)
                else:
                    status, body = 404, {"error": "not found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the counters above are what the tests read

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="oauth-provider", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def running_oauth_provider(**options: object) -> Iterator[OAuthProvider]:
    provider = OAuthProvider(**options)  # type: ignore[arg-type]
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
