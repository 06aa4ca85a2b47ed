"""One Settings object: defaults, overridden by config/gateway.toml, overridden by GATEWAY_* variables.

Nothing reads the environment or the toml except `load_settings`; every component is handed the
object it returns (no module globals), so tests build as many independent gateways as they like.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MIB = 1024 * 1024
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")


class MailboxSettings(BaseModel):
    """One IMAP mailbox to poll (SPEC §9)."""

    name: str
    host: str
    port: int = 993
    security: Literal["tls", "starttls", "none"] = "tls"
    user: str
    password: str = ""
    # Alternatives to an inline password, so the toml can be committed without secrets.
    password_file: Path | None = None
    password_env: str | None = None
    folder: str = "INBOX"
    # "flag" (set \Seen), "delete" (expunge) or "move:FOLDER" (the folder is created if missing).
    after_fetch: str = "flag"
    poll_seconds: float = 60.0
    # Use IDLE where the server offers it; false polls every poll_seconds (servers with broken IDLE).
    idle: bool = True
    # TLS trust for "tls"/"starttls": a PEM CA file (private CA, self-signed server) instead of the
    # system store; tls_verify = false accepts any certificate (only on a network you trust).
    ca_file: Path | None = None
    tls_verify: bool = True
    # "password" (LOGIN), or OAuth2 bearer tokens: "xoauth2" (Microsoft 365, Gmail) or
    # "oauthbearer" (RFC 7628). OAuth2 needs token_endpoint, client_id and a refresh token; the
    # refresh token the provider rotates is kept in the database (shared by instances).
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    token_endpoint: str = ""
    client_id: str = ""
    client_secret: str = ""
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    refresh_token: str = ""
    refresh_token_file: Path | None = None
    refresh_token_env: str | None = None
    # Space-separated scopes sent with the refresh (Microsoft 365 wants them; empty: none sent).
    scope: str = ""

    @model_validator(mode="after")
    def _oauth_complete(self) -> MailboxSettings:
        if self.auth != "password" and not (self.token_endpoint and self.client_id):
            raise ValueError(f"mailbox {self.name}: auth {self.auth} needs token_endpoint and client_id")
        return self

    def resolved_client_secret(self) -> str:
        return _secret(self.client_secret, self.client_secret_file, self.client_secret_env)

    def resolved_refresh_token(self) -> str:
        return _secret(self.refresh_token, self.refresh_token_file, self.refresh_token_env)

    @field_validator("after_fetch")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value in ("flag", "delete") or (value.startswith("move:") and len(value) > 5):
            return value
        raise ValueError("after_fetch must be 'flag', 'delete' or 'move:FOLDER'")

    def resolved_password(self) -> str:
        return _secret(self.password, self.password_file, self.password_env)


def _secret(value: str, file: Path | None, env: str | None) -> str:
    """A secret given inline, in a file (first line, trimmed) or in an environment variable."""
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    if env:
        return os.environ.get(env, "")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    # --- storage -------------------------------------------------------------------------------
    database_url: str = "sqlite:///var/gateway.db"
    data_dir: Path = Path("var/data")
    # Where attachment contents live: "disk" (data_dir/blobs) or "database" (shared by instances).
    blob_store: Literal["disk", "database"] = "disk"
    # Apply Alembic migrations when `serve` starts (a no-op when the schema is current).
    auto_migrate: bool = True

    # --- SMTP listener -------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_hostname: str = "support.example.test"
    smtp_max_message_bytes: int = 64 * MIB
    # Optional STARTTLS (both files, PEM) and AUTH for staff submitting replies (login -> password).
    smtp_tls_cert_file: Path | None = None
    smtp_tls_key_file: Path | None = None
    smtp_auth_users: dict[str, str] = Field(default_factory=dict)
    smtp_auth_require_tls: bool = True

    # --- HTTP (health, panel API) ----------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8025

    # --- addresses -------------------------------------------------------------------------------
    support_address: str = "bok@example.test"
    support_name: str = "Biuro Obsługi Klienta"
    staff_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    staff_queue_address: str = "staff@example.test"

    # --- secrets (empty: generated once and kept in the database, shared by every instance) ------
    panel_secret: str = ""
    signing_secret: str = ""

    # --- outgoing mail ---------------------------------------------------------------------------
    relay_url: str = "maildir:var/sent"
    default_language: Literal["pl", "en"] = "pl"
    template_dir: Path | None = None
    outbox_poll_seconds: float = 2.0
    outbox_backoff_seconds: float = 30.0
    outbox_backoff_max_seconds: float = 3600.0
    outbox_give_up_hours: float = 48.0
    relay_timeout_seconds: float = 60.0
    # Smarthost login when the relay URL has no user:password@; *_file / *_env keep it out of the toml.
    relay_username: str = ""
    relay_username_file: Path | None = None
    relay_username_env: str | None = None
    relay_password: str = ""
    relay_password_file: Path | None = None
    relay_password_env: str | None = None
    # PEM bundle that signs the relay's certificate (default: the system's CAs).
    relay_tls_ca_file: Path | None = None
    # Verify the certificate on smtps:// and smtp+starttls:// (opportunistic STARTTLS on smtp:// never does).
    relay_tls_verify: bool = True
    # Connections to the relay per outbox pass; each carries several messages in turn.
    relay_max_connections: int = 2
    auto_replies_per_sender_per_hour: int = 5

    # --- cases -----------------------------------------------------------------------------------
    max_attachment_bytes: int = 15 * MIB
    reopen_window_days: int = 30
    auto_close_days: int = 7

    # --- background work -------------------------------------------------------------------------
    journal_replay_seconds: float = 30.0
    # While mail arrives, processing gives way to acknowledging after each batch (never stops), until
    # the oldest waiting entry is this many seconds old; then it catches up at full speed.
    pipeline_max_lag_seconds: float = 5.0
    # Journal entries processed in one transaction: a commit and the lookups of every entry are
    # shared; 50 keeps the write lock short and a failure cheap to isolate (the batch is redone with
    # a savepoint per entry).
    pipeline_batch_max_entries: int = 50
    # Raw bytes of one batch (an entry larger than this goes alone): bounds the memory of parsed mail.
    pipeline_batch_max_bytes: int = 16 * 1024 * 1024
    # Seconds of parsing after which a batch takes no more entries, so the write lock is never held long.
    pipeline_batch_max_seconds: float = 2.0
    # Processes that parse journal entries ahead of the pipeline (the step that needs no database):
    # one core stays with the gateway's own process, the others parse. 0: parse in-process only.
    pipeline_parse_workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1) - 1))
    # Entries larger than this are parsed in-process, so big mail never crosses a pipe twice (memory).
    pipeline_parse_pool_max_entry_bytes: int = 4 * MIB
    imap_mailboxes: list[MailboxSettings] = Field(default_factory=list)
    instance_name: str = Field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    # --- SMTP limits (SPEC §13) ------------------------------------------------------------------
    # Live SMTP sessions in all (Postfix: process limit 100); past it new ones get 421 4.7.0 at once.
    smtp_max_connections: int = 200
    # Live SMTP sessions per client IP (Postfix's is 50; MTAs open ~5); trusted_relays are exempt.
    smtp_max_connections_per_ip: int = 20
    # Seconds a client has after our banner for its first command (a silent client only holds a slot).
    smtp_greeting_timeout_seconds: float = 30.0
    # Seconds of silence allowed while we wait for a command or for more DATA (Postfix smtpd_timeout).
    smtp_timeout_seconds: float = 60.0
    # The same wait when the house is 80 % full, so idle sessions make room (Postfix's stress value).
    smtp_stress_timeout_seconds: float = 10.0
    # Accepted recipients per message; the next RCPT gets 452 4.5.3 (Postfix smtpd_recipient_limit).
    smtp_max_recipients: int = 100

    # --- MIME budgets and poison messages (SPEC §13) ---------------------------------------------
    # Started attempts at one journal entry that never finished (the process died) before it is
    # quarantined as poison; 3 lets a message survive two unrelated crashes (Postfix has no equivalent).
    poison_max_attempts: int = 3
    # MIME parts unpacked per message; the rest become one refused entry (real mail: < 50; a bomb: 20 000).
    mime_max_parts: int = 500
    # Nesting of multipart/message parts; deeper ones are not unpacked (real mail: < 10; at most 200).
    mime_max_depth: int = 50
    # Header fields kept per part; From, Subject, Message-ID... are kept past it (real mail: < 200).
    mime_max_headers: int = 2000
    # Header bytes kept per part (real mail: a few KiB; 1 MiB leaves room for huge To/Cc lists).
    mime_max_header_bytes: int = 1 << 20
    # Defects listed per message, the rest counted (a broken message lists tens; keeps rows small).
    mime_max_defects: int = 200
    # Bytes winmail.dat (TNEF) may unpack to per message (the SIZE limit: a bomb stops there).
    mime_max_container_output_bytes: int = 64 << 20
    # Seconds one message may take to parse before the rest is left not unpacked (normal: < 1 s).
    mime_max_processing_seconds: float = 20.0

    # --- sender trust (SPEC §12) -----------------------------------------------------------------
    # MTAs in front of the gateway (IPs/CIDRs); only their Authentication-Results/spam headers count. Empty: none.
    trusted_relays: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # authserv-ids of those relays' Authentication-Results; a header with any other id is the sender's text.
    trusted_authserv_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # host:port of the DNS resolver for our own SPF/DKIM/DMARC checks; empty: the system's (/etc/resolv.conf).
    dns_resolver: str = ""
    # "on": check SPF/DKIM/DMARC here when no trusted relay did; "off": skip (trusted headers still count).
    sender_verification: Literal["on", "off"] = "on"
    # DNS time all lookups of one message may take together; past it a lookup is temperror, never a pass.
    sender_verification_budget_seconds: float = 3.0
    # Who gets automatic mail: "authenticated" senders, senders whose SPF/DMARC did not fail, or "all" (never spam).
    auto_reply_policy: Literal["authenticated", "not-failed", "all"] = "not-failed"
    # A trusted relay's spam score at or above this is spam (SpamAssassin's own default "required" is 5.0).
    spam_score_threshold: float = 5.0
    # Automatic mails to all senders together per hour: a flood of forged mail cannot turn us into a spam source.
    auto_replies_per_hour: int = 300
    # Days a staff reply address (Reply-To of a notification) keeps working; a leaked one dies with it.
    staff_token_days: int = 90
    # SMTP AUTH login -> other From addresses it may send as (a login may always send as itself).
    smtp_auth_send_as: dict[str, list[str]] = Field(default_factory=dict)

    # --- operations: metrics, logs, retention (SPEC §14) -----------------------------------------
    # Log lines as "text" (human) or "json" (one object per line, for a log shipper).
    log_format: Literal["text", "json"] = "text"
    # Threshold for `gateway serve` (other commands log warnings only): DEBUG, INFO, WARNING, ERROR.
    log_level: str = "INFO"
    # A repeated error is logged once, then as one "N more in the last S s" line per this many seconds.
    log_storm_seconds: float = 60.0
    # Raw journal bytes of processed entries are dropped after this many days (the digest stays);
    # quarantined entries are never purged automatically.
    journal_retention_days: float = 90.0
    # Bytes of sent outbox rows are dropped after this many days (the row and its status stay).
    outbox_retention_days: float = 30.0
    # How often the purge job runs (hours); `gateway purge` runs the same on demand.
    purge_interval_hours: float = 24.0
    # Where `serve` writes the SMTP and HTTP ports it bound, as JSON, once ready; none by default. With
    # GATEWAY_SMTP_PORT=0 / GATEWAY_HTTP_PORT=0 (any free port) this is how a supervisor or test finds them.
    ports_file: Path | None = None
    # A token for /status besides the panel's system JWT (a static secret for a bookmark or an
    # operator's browser); empty: only the system JWT opens the page.
    status_token: str = ""

    @field_validator("trusted_relays", "trusted_authserv_ids", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("staff_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [str(part).strip().lower() for part in value if str(part).strip()]
        return value

    @property
    def support_domain(self) -> str:
        return self.support_address.rpartition("@")[2].lower()

    @property
    def support_local_part(self) -> str:
        return self.support_address.rpartition("@")[0].lower()

    def is_staff(self, address: str) -> bool:
        address = address.strip().lower()
        domain = "@" + address.rpartition("@")[2]
        return address in self.staff_addresses or domain in self.staff_addresses

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_path = Path(os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG_PATH))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings from defaults < toml (GATEWAY_CONFIG) < GATEWAY_* env < explicit overrides."""
    return Settings(**overrides)
