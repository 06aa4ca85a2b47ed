"""A throwaway Dovecot for the test suite: generated config, users and maildirs in a temp dir.

Nothing of the system's Dovecot is used except the binaries: `dovecot -F -c CONF` runs in the
foreground as our child, listens on a free loopback port, keeps its sockets (base_dir), state,
log and mail under one temp dir, so several instances can run side by side and vanish afterwards.

Running as root: Dovecot refuses to open mail as UID 0 ("userdb returned 0 as uid"), so the mail
is owned by `nobody` and the login processes run as `dovenull`. The temp dir is made with
mkdtemp in /tmp (not pytest's tmp_path, whose parent is 0700 and so closed to `nobody`).

Test-side IMAP (APPEND, flag listing) uses stdlib imaplib, as an MTA's delivery would leave mail.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import MailboxSettings
from tests.helpers import free_port

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0
DEFAULT_USERS = {"support": "support-secret", "other": "other-secret"}


def dovecot_binary() -> str | None:
    """The dovecot binary, also when /usr/sbin is not on PATH (non-login shells, sudo)."""
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def doveadm_binary() -> str | None:
    dovecot = dovecot_binary()
    if dovecot is None:
        return None
    for candidate in (shutil.which("doveadm"), "/usr/bin/doveadm", str(Path(dovecot).parent / "doveadm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class DovecotMissing(RuntimeError):
    """Dovecot is a required part of the suite: a test that needs it errors, it is never skipped."""


def require_dovecot() -> str:
    binary = dovecot_binary()
    if binary is None:
        raise DovecotMissing("dovecot is not installed (`make test` installs dovecot-imapd from Debian)")
    return binary


class PortTaken(RuntimeError):
    """Another process bound the port picked for this Dovecot before Dovecot did."""


@dataclass(frozen=True)
class _Identities:
    """Which system users Dovecot's processes and mail files run as."""

    mail_uid: int
    mail_gid: int
    login_user: str
    internal_user: str


def _identities() -> _Identities:
    if os.geteuid() != 0:
        # Unprivileged: Dovecot cannot switch users, so every process is the current user.
        me = pwd.getpwuid(os.geteuid())
        return _Identities(me.pw_uid, me.pw_gid, me.pw_name, me.pw_name)
    nobody = pwd.getpwnam("nobody")
    login = "dovenull" if _user_exists("dovenull") else "nobody"
    internal = "dovecot" if _user_exists("dovecot") else login
    return _Identities(nobody.pw_uid, nobody.pw_gid, login, internal)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class DovecotServer:
    """One Dovecot instance; `start()` it, or use `running_dovecot()`."""

    root: Path
    users: dict[str, str]
    tls: bool = False
    # Appended to the generated dovecot.conf, e.g. "imap_capability = IMAP4rev1" (no IDLE, MOVE).
    extra_config: str = ""
    # An RFC 7662 introspection URL: adds Dovecot's oauth2 passdb (XOAUTH2, OAUTHBEARER) next to
    # the password file; Dovecot POSTs `token=...` there and wants {"active": true, "username": ...}.
    oauth_introspection_url: str | None = None
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    cert_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _started_once: bool = field(default=False, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def maildir(self, user: str) -> Path:
        return self.mail_root / user

    # --- lifecycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write config, users and directories (once; restarts reuse them and the same ports)."""
        ids = _identities()
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, ids.mail_uid, ids.mail_gid)
        self.root.chmod(0o755)  # `nobody` must traverse to its maildirs
        if self.tls and self.cert_path is None:
            self.cert_path, _key = _self_signed_cert(self.root)
            self.tls_port = free_port()
        self._write_users()
        self.conf_path.write_text(self._config(ids), encoding="utf-8")

    def _write_users(self) -> None:
        lines = [f"{user}:{{PLAIN}}{password}\n" for user, password in self.users.items()]
        path = self.root / "users"
        path.write_text("".join(lines), encoding="utf-8")
        path.chmod(0o644)  # read by the auth process, which does not run as root

    def _config(self, ids: _Identities) -> str:
        root = self.root
        if self.tls:
            ssl_lines = (
                f"ssl = yes\nssl_cert = <{root / 'cert.pem'}\nssl_key = <{root / 'key.pem'}\n"
                "ssl_min_protocol = TLSv1.2\n"
            )
            imaps = f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n  }}\n"
        else:
            ssl_lines = "ssl = no\n"
            imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        mechanisms = "plain login xoauth2 oauthbearer" if self.oauth_introspection_url else "plain login"
        return (
            f"base_dir = {root / 'run'}\n"
            f"state_dir = {root / 'state'}\n"
            f"log_path = {self.log_path}\n"
            "protocols = imap\n"
            "listen = 127.0.0.1\n" + ssl_lines + "disable_plaintext_auth = no\n"
            f"auth_mechanisms = {mechanisms}\n"
            f"default_internal_user = {ids.internal_user}\n"
            f"default_login_user = {ids.login_user}\n"
            # The mail user may be a system account below the default first_valid_uid (500).
            "first_valid_uid = 1\n"
            f"mail_location = maildir:{self.mail_root}/%u\n"
            # Tests fire logins quickly, from one address: no penalties, no per-IP caps.
            "auth_failure_delay = 0\n"
            "mail_max_userip_connections = 100\n"
            "passdb {\n  driver = passwd-file\n"
            # With the oauth2 passdb, each passdb serves its own mechanisms; the static userdb then
            # cannot ask "a" passdb whether a user exists (doveadm), so it accepts every user.
            + ("  mechanisms = plain login\n" if self.oauth_introspection_url else "")
            + f"  args = scheme=PLAIN username_format=%u {root / 'users'}\n}}\n"
            f"{self._oauth_passdb()}"
            "userdb {\n  driver = static\n"
            f"  args = uid={ids.mail_uid} gid={ids.mail_gid} home={self.mail_root}/%u"
            + (" allow_all_users=yes" if self.oauth_introspection_url else "")
            + "\n}\n"
            "service imap-login {\n"
            f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
            + imaps
            + "}\n"
            + self.extra_config
        )

    def _oauth_passdb(self) -> str:
        if not self.oauth_introspection_url:
            return ""
        conf = self.root / "dovecot-oauth2.conf.ext"
        conf.write_text(
            f"introspection_url = {self.oauth_introspection_url}\n"
            "introspection_mode = post\n"
            # Without a tokeninfo_url, every login asks the introspection endpoint.
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n",
            encoding="utf-8",
        )
        conf.chmod(0o644)
        return f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {conf}\n}}\n"

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("dovecot is already running")
        if not self.conf_path.exists():
            self.prepare()
        binary = require_dovecot()
        for _attempt in range(3):
            try:
                self._spawn(binary)
                return
            except PortTaken:
                # Dovecot cannot listen on port 0 and report it, so its ports are picked free
                # beforehand; another process may take one meanwhile: pick again (first start only,
                # a restart must keep the ports its clients know).
                if self._started_once:
                    raise
                self.port = free_port()
                if self.tls:
                    self.tls_port = free_port()
                self.conf_path.write_text(self._config(_identities()), encoding="utf-8")
        raise RuntimeError(f"dovecot found no free port:\n{self.diagnostics()}")

    def _spawn(self, binary: str) -> None:
        with open(self.root / "dovecot.stderr", "ab") as stderr:  # the child keeps its own copy
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # Its own process group, so stop() reaches every process of this instance.
                start_new_session=True,
            )
        self._wait_ready()
        self._started_once = True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process = None
                diagnostics = self.diagnostics()
                if "Address already in use" in diagnostics[-2000:]:
                    raise PortTaken(diagnostics)
                raise RuntimeError(f"dovecot exited at start:\n{diagnostics}")
            if _greets(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on port {self.port}:\n{self.diagnostics()}")

    def stop(self) -> None:
        """Stop the server and drop every client connection; mail and config are kept.

        Like a systemd restart (KillMode=control-group) the whole process group gets SIGTERM:
        signalled alone, the master exits but an imap process serving an IDLE client lingers
        for ~10 s before it says BYE.
        """
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _wait_group_gone(process.pid)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def diagnostics(self) -> str:
        parts = []
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    # --- IMAP helpers (stdlib imaplib, as any other client would) ---------------------------------

    @contextlib.contextmanager
    def client(self, user: str = "support") -> Iterator[imaplib.IMAP4]:
        connection = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            _ok(connection.login(user, self.users[user]))
            yield connection
        finally:
            with contextlib.suppress(Exception):
                connection.logout()

    def append(self, raw: bytes, *, user: str = "support", folder: str = "INBOX", flags: str | None = None) -> int:
        """APPEND `raw` and return its UID (from APPENDUID).

        Only CRLF messages round-trip byte-exact: imaplib rewrites bare LF/CR to CRLF and Dovecot's
        maildir stores LF and serves CRLF. So anything else is refused rather than silently altered.
        """
        if re.search(rb"\r(?!\n)|(?<!\r)\n", raw):
            raise ValueError("test messages must use CRLF line endings to round-trip byte-exact")
        with self.client(user) as connection:
            typ, data = connection.append(_quote(folder), flags, None, raw)
            _ok((typ, data))
        match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        if match is None:
            raise RuntimeError(f"no APPENDUID in {data!r}")
        return int(match.group(1))

    def append_many(self, raws: list[bytes], *, user: str = "support", folder: str = "INBOX") -> None:
        """APPEND each of `raws` in order over one connection (CRLF only, as `append`)."""
        with self.client(user) as connection:
            for raw in raws:
                if re.search(rb"\r(?!\n)|(?<!\r)\n", raw):
                    raise ValueError("test messages must use CRLF line endings to round-trip byte-exact")
                _ok(connection.append(_quote(folder), None, None, raw))

    def remove_flag(self, uids: list[int], flag: str, *, user: str = "support", folder: str = "INBOX") -> None:
        """What a human's client does on "mark as unread" (flag "\\Seen")."""
        with self.client(user) as connection:
            _ok(connection.select(_quote(folder)))
            _ok(connection.uid("STORE", ",".join(map(str, uids)), "-FLAGS", f"({flag})"))

    def create_folder(self, folder: str, *, user: str = "support") -> None:
        with self.client(user) as connection:
            _ok(connection.create(_quote(folder)))

    def folders(self, *, user: str = "support") -> set[str]:
        """The names of every folder of `user` (LIST; names decoded from modified UTF-7)."""
        with self.client(user) as connection:
            typ, data = connection.list()
            _ok((typ, data))
        names = set()
        for line in data:
            match = re.search(rb'"[^"]*" "?(.*?)"?$', line or b"")
            if match:
                names.add(_decode_utf7(match.group(1).decode("ascii")))
        return names

    def delete_folder(self, folder: str, *, user: str = "support") -> None:
        with self.client(user) as connection:
            _ok(connection.delete(_quote(folder)))

    def messages(self, *, user: str = "support", folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in `folder` (read-only: EXAMINE changes nothing)."""
        with self.client(user) as connection:
            typ, data = connection.select(_quote(folder), readonly=True)
            _ok((typ, data))
            if int(data[0] or 0) == 0:
                return {}
            typ, data = connection.uid("FETCH", "1:*", "(UID FLAGS)")
            _ok((typ, data))
        result: dict[int, set[str]] = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            uid = re.search(rb"UID (\d+)", line or b"")
            flags = re.search(rb"FLAGS \(([^)]*)\)", line or b"")
            if uid and flags:
                result[int(uid.group(1))] = set(flags.group(1).decode().split())
        return result

    def fetch(self, uid: int, *, user: str = "support", folder: str = "INBOX") -> bytes:
        with self.client(user) as connection:
            _ok(connection.select(_quote(folder), readonly=True))
            typ, data = connection.uid("FETCH", str(uid), "(BODY.PEEK[])")
            _ok((typ, data))
        for item in data:
            if isinstance(item, tuple):
                return item[1]
        raise KeyError(uid)

    def uidvalidity(self, *, user: str = "support", folder: str = "INBOX") -> int:
        with self.client(user) as connection:
            typ, data = connection.status(_quote(folder), "(UIDVALIDITY)")
            _ok((typ, data))
        match = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
        assert match is not None, data
        return int(match.group(1))

    def change_uidvalidity(self, *, user: str = "support", folder: str = "INBOX", value: int | None = None) -> int:
        """Give `folder` a new UIDVALIDITY, keeping its messages (as a server migration would).

        `doveadm mailbox update --uid-validity` is Dovecot's own way to do it; a session that has
        the folder selected is told (or disconnected) when it next syncs.
        """
        doveadm = doveadm_binary()
        if doveadm is None:
            raise DovecotMissing("doveadm is not installed (it comes with dovecot-core)")
        new_value = value if value is not None else self.uidvalidity(user=user, folder=folder) + 1000
        subprocess.run(
            [
                doveadm,
                "-c",
                str(self.conf_path),
                "mailbox",
                "update",
                "-u",
                user,
                "--uid-validity",
                str(new_value),
                folder,
            ],
            check=True,
            capture_output=True,
        )
        return new_value

    # --- what the gateway needs to talk to it --------------------------------------------------------

    def mailbox_settings(self, **overrides: Any) -> MailboxSettings:
        """MailboxSettings for a poller of this server (plain IMAP unless told otherwise)."""
        values: dict[str, Any] = {
            "name": "support",
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "user": "support",
            "folder": "INBOX",
            "after_fetch": "flag",
            "poll_seconds": 60.0,
        }
        values.update(overrides)
        if values["security"] == "tls" and "port" not in overrides:
            values["port"] = self.tls_port
        if values["security"] != "none" and self.cert_path is not None:
            values.setdefault("ca_file", self.cert_path)  # trust this server's self-signed certificate
        if values.get("auth", "password") == "password":
            values.setdefault("password", self.users[values["user"]])
        return MailboxSettings(**values)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate."""
        if self.cert_path is None:
            raise RuntimeError("this server was started without tls=True")
        return ssl.create_default_context(cafile=str(self.cert_path))


def _encode_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): "Zgłoszenia" is "Zg&AUI-oszenia"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + data.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _decode_utf7(name: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 §5.1.3) to str: "&AUI-" is "ł"."""

    def decode(match: re.Match[str]) -> str:
        chunk = match.group(1)
        if not chunk:
            return "&"
        data = chunk.replace(",", "/")
        data += "=" * (-len(data) % 4)
        return base64.b64decode(data).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", decode, name)


def _quote(mailbox: str) -> str:
    """imaplib sends mailbox names as they are; a space would split the argument."""
    mailbox = _encode_utf7(mailbox)
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(response: tuple[str, Any]) -> None:
    typ, data = response
    if typ != "OK":
        raise RuntimeError(f"IMAP command failed: {typ} {data!r}")


def _wait_group_gone(pgid: int) -> None:
    """Wait until no live process is left in the group (SIGKILL stragglers after 5 s).

    Zombies do not count: orphaned children are reaped by whatever PID 1 is, in its own time.
    """
    deadline = time.monotonic() + 5
    while _live_members(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)


def _live_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces, so split after the last ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


@contextlib.contextmanager
def running_dovecot(
    *,
    users: dict[str, str] | None = None,
    tls: bool = False,
    extra_config: str = "",
    oauth_introspection_url: str | None = None,
) -> Iterator[DovecotServer]:
    """Start a fresh Dovecot; stop it and delete everything it kept on exit."""
    require_dovecot()
    server = DovecotServer(
        root=Path(tempfile.mkdtemp(prefix="dovecot-test-")),
        users=dict(users or DEFAULT_USERS),
        tls=tls,
        extra_config=extra_config,
        oauth_introspection_url=oauth_introspection_url,
    )
    try:
        server.prepare()
        server.start()
        yield server
    finally:
        server.close()


def make_dovecot_fixture(
    *,
    scope: str = "function",
    name: str = "dovecot",
    tls: bool = False,
    users: dict[str, str] | None = None,
    extra_config: str = "",
) -> Callable[..., Any]:
    """A pytest fixture yielding a running DovecotServer; assign it to a name in a conftest/module:

    dovecot = make_dovecot_fixture()
    """

    def _fixture() -> Iterator[DovecotServer]:
        with running_dovecot(users=users, tls=tls, extra_config=extra_config) as server:
            yield server

    return pytest.fixture(scope=scope, name=name)(_fixture)  # type: ignore[call-overload]
