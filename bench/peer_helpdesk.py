"""Against a peer: `gateway ingest --notify` and django-helpdesk 2.6.1's `get_email` on the same files.

Issue 13. django-helpdesk is a mature Django help desk that turns mail into tickets; its
`get_email` management command reads a queue's mailbox, here the "local" mailbox type: a
directory of .eml files, each deleted once it became a ticket or a follow-up. This benchmark
  1. installs django-helpdesk==2.6.1 with pip into a virtual environment of its own
     (bench/out/peer-helpdesk/venv, git-ignored, made once and reused) and writes a minimal
     Django project (SQLite) with one Queue: email_box_type "local", email_box_local_dir the
     directory the files are copied into, email_box_interval 0, new and updated ticket CCs to the
     staff address, e-mail written to files (Django's file backend);
  2. generates the messages (2 000, 200 with --quick): the first half are new requests from as
     many customers (Polish text; 10% carry a 40 KB PDF, 5% a small `.bin` file), the second half
     replies by the same customers to their earlier request, made after the first half was
     processed, as a customer answers the acknowledgement: the subject is "Re:" (or "Odp:", "AW:")
     plus the tag each side puts in its own subjects ("[support-N]" for django-helpdesk, where N is
     the ticket id it gave the request, "[#NUMBER]" for the gateway), and 60% also carry
     In-Reply-To and References, 20% References only, 20% no threading header at all (webmail);
  3. times, in the same run, on the same files, in two rounds (requests, then replies):
       django-helpdesk: `python manage.py get_email --quiet` (wall time of the command);
       the gateway:     `gateway ingest --notify DIR` on a fresh SQLite database (wall time),
     the gateway with a DNS server on 127.0.0.1 that knows nothing (its sender checks stay local)
     and an hourly auto-reply cap above the message count (so it acknowledges every request, as
     django-helpdesk does);
  4. counts what each made of it: tickets / cases, replies that landed in their request's thread,
     and attachments kept (the `.bin` ones separately).

Reported: msg/s of each (messages over the two commands' wall time) and the ratio (issue 13
target: the gateway at least 5x django-helpdesk). No code of django-helpdesk is kept in the
repository; only this script, which installs and drives it. Nothing is pinned: both run as one
command after the other. Figures go to bench/out/peer_helpdesk.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.backlog import count_rows, sqlite_read_only_url
from bench.common import (
    OUT_DIR,
    RunClock,
    add_run_options,
    free_port,
    make_console,
    ratio_or_nan,
    rounded,
    scratch_dir,
    verdict,
    verdict_markup,
    write_report,
)
from bench.smtp_throughput import CUSTOMERS, SUBJECTS, gateway_env, polish_text
from bench.sustained import local_dns

NAME = "peer_helpdesk"
MESSAGES = 2000
QUICK_MESSAGES = 200
TARGET_RATIO = 5.0
PEER = "django-helpdesk==2.6.1"
VENV_DIR = OUT_DIR / "peer-helpdesk" / "venv"
QUEUE_SLUG = "support"
SUPPORT_ADDRESS = "bok@example.test"
STAFF_ADDRESS = "staff@example.test"
PDF_BYTES = 40 * 1024
BIN_BYTES = 6 * 1024
INSTALL_TIMEOUT_S = 900.0
SETUP_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 900.0  # one timed command (a few hundred msg/s at worst: far below)
REPLY_PREFIXES = ("Re: ", "Odp: ", "AW: ", "RE: ")
STARTED = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)

# --------------------------------------------------------------------------------------------
# The messages


@dataclass(frozen=True)
class Request:
    """A new request: who sent it, its Message-ID and subject (what a reply refers to)."""

    index: int
    sender: str
    name: str
    message_id: str
    subject: str


@dataclass(frozen=True)
class Reply:
    """A reply by the requester of `parent`; `threading` says which headers it carries."""

    index: int
    parent: Request
    threading: str  # "headers" (In-Reply-To and References), "references", "subject"


def request_of(index: int) -> Request:
    name, address = CUSTOMERS[index % len(CUSTOMERS)]
    local, domain = address.split("@")
    return Request(
        index=index,
        sender=f"{local}.{index:05d}@{domain}",
        name=name,
        message_id=f"<req.{index:05d}.bench@{domain}>",
        subject=SUBJECTS[index % len(SUBJECTS)],
    )


def attach_extras(message: EmailMessage, index: int, rng: random.Random) -> None:
    """10% of the messages carry a 40 KB PDF, 5% a small .bin file (some both)."""
    if index % 10 == 3:
        message.add_attachment(
            b"%PDF-1.4\n" + rng.randbytes(PDF_BYTES - 9),
            maintype="application",
            subtype="pdf",
            filename=f"potwierdzenie-{index:05d}.pdf",
        )
    if index % 20 == 7:
        message.add_attachment(
            rng.randbytes(BIN_BYTES),
            maintype="application",
            subtype="octet-stream",
            filename=f"log-routera-{index:05d}.bin",
        )


def render(
    *, sender: str, name: str, message_id: str, subject: str, index: int, rng: random.Random, extra: dict[str, str]
) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = Address(name, addr_spec=sender)
    message["To"] = Address("Biuro Obsługi Klienta", addr_spec=SUPPORT_ADDRESS)
    message["Subject"] = subject
    message["Date"] = format_datetime(STARTED + dt.timedelta(seconds=index))
    message["Message-ID"] = message_id
    for header, value in extra.items():
        message[header] = value
    message["MIME-Version"] = "1.0"
    message["User-Agent"] = "Mozilla Thunderbird"
    text = polish_text(rng, name, 1500).decode()
    message.set_content(text, charset="utf-8", cte="8bit")
    attach_extras(message, index, rng)
    return message.as_bytes()


def write_requests(directory: Path, count: int) -> list[Request]:
    rng = random.Random(2026)
    directory.mkdir(parents=True)
    requests = [request_of(index) for index in range(count)]
    for request in requests:
        raw = render(
            sender=request.sender,
            name=request.name,
            message_id=request.message_id,
            subject=request.subject,
            index=request.index,
            rng=rng,
            extra={},
        )
        (directory / f"m{request.index:05d}.eml").write_bytes(raw)
    return requests


def plan_replies(requests: Sequence[Request], count: int) -> list[Reply]:
    """Replies to requests drawn at random (some get two, some none); the mix of threading headers."""
    rng = random.Random(13)
    kinds = ["headers"] * 6 + ["references"] * 2 + ["subject"] * 2
    first = len(requests)
    return [Reply(first + number, rng.choice(requests), kinds[number % 10]) for number in range(count)]


def write_replies(directory: Path, replies: Sequence[Reply], tags: dict[str, list[str]]) -> None:
    """The replies, with each side's tag of the request (tags: request Message-ID -> tags)."""
    rng = random.Random(2027)
    directory.mkdir(parents=True)
    for reply in replies:
        parent = reply.parent
        prefix = REPLY_PREFIXES[reply.index % len(REPLY_PREFIXES)]
        tagged = " ".join([*tags.get(parent.message_id, []), parent.subject])
        extra: dict[str, str] = {}
        if reply.threading == "headers":
            extra = {"In-Reply-To": parent.message_id, "References": parent.message_id}
        elif reply.threading == "references":
            extra = {"References": parent.message_id}
        domain = parent.sender.split("@")[1]
        raw = render(
            sender=parent.sender,
            name=parent.name,
            message_id=f"<re.{reply.index:05d}.bench@{domain}>",
            subject=prefix + tagged,
            index=reply.index,
            rng=rng,
            extra=extra,
        )
        (directory / f"m{reply.index:05d}.eml").write_bytes(raw)


def reply_message_id(reply: Reply) -> str:
    return f"<re.{reply.index:05d}.bench@{reply.parent.sender.split('@')[1]}>"


def bare(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>").strip()


# --------------------------------------------------------------------------------------------
# django-helpdesk: its own virtual environment and a minimal project


SETTINGS_PY = """\
# A minimal Django project for django-helpdesk's get_email (written by bench/peer_helpdesk.py).
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # project/benchproject/settings.py
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.humanize",
    "rest_framework",
    "helpdesk",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "benchproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ROOT / "helpdesk.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
SITE_ID = 1
STATIC_URL = "/static/"
MEDIA_ROOT = ROOT / "media"
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = ROOT / "sent"
DEFAULT_FROM_EMAIL = "%(support)s"
HELPDESK_TEAMS_MODE_ENABLED = False
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
"""

URLS_PY = """\
from django.urls import include, path

urlpatterns = [path("helpdesk/", include("helpdesk.urls", namespace="helpdesk"))]
"""

MANAGE_PY = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

MAKE_QUEUE_PY = """\
import sys

from helpdesk.models import Queue

Queue.objects.create(
    title="Support",
    slug="%(slug)s",
    email_address="%(support)s",
    allow_email_submission=True,
    email_box_type="local",
    email_box_local_dir=sys.argv[1],
    email_box_interval=0,
    logging_type="none",
    new_ticket_cc="%(staff)s",
    updated_ticket_cc="%(staff)s",
    enable_notifications_on_email_events=True,
)
"""


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def ensure_peer(console: Console) -> str:
    """The peer's virtual environment, made (once) with pip from the package index; returns its version."""
    probe = [str(venv_python()), "-c", "import importlib.metadata as m; print(m.version('django-helpdesk'))"]
    if venv_python().exists():
        done = subprocess.run(probe, capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == PEER.split("==")[1]:
            return done.stdout.strip()
        shutil.rmtree(VENV_DIR)
    console.log(f"installing {PEER} into {VENV_DIR.relative_to(OUT_DIR.parent.parent)}")
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True, timeout=INSTALL_TIMEOUT_S)
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PEER],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def make_project(root: Path, mailbox: Path) -> Path:
    """The Django project under root/project, migrated, with its one queue reading `mailbox`."""
    project = root / "project"
    package = project / "benchproject"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS_PY % {"support": SUPPORT_ADDRESS})
    (package / "urls.py").write_text(URLS_PY)
    (project / "manage.py").write_text(MANAGE_PY)
    (root / "sent").mkdir()
    mailbox.mkdir()
    manage = [str(venv_python()), "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=project, check=True, timeout=SETUP_TIMEOUT_S)
    script = MAKE_QUEUE_PY % {"slug": QUEUE_SLUG, "support": SUPPORT_ADDRESS, "staff": STAFF_ADDRESS}
    subprocess.run(
        [*manage, "shell", "-c", script.replace("sys.argv[1]", repr(str(mailbox)))],
        cwd=project,
        check=True,
        timeout=SETUP_TIMEOUT_S,
    )
    return project


@dataclass(frozen=True)
class Timed:
    """One timed command: wall seconds, exit status, the tail of its output."""

    seconds: float
    returncode: int
    output_tail: str


def timed(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Timed:
    started = time.perf_counter()
    done = subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
    )
    seconds = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    return Timed(seconds, done.returncode, "\n".join(output[-5:]))


def helpdesk_round(project: Path, mailbox: Path, source: Path) -> Timed:
    """Copy the round's files into the queue's directory and time get_email over them."""
    for path in sorted(source.iterdir()):
        shutil.copyfile(path, mailbox / path.name)
    result = timed([str(venv_python()), "manage.py", "get_email", "--quiet"], cwd=project)
    left = len(list(mailbox.iterdir()))
    if left:  # a file get_email could not make a ticket of stays; keep the next round apart
        for path in mailbox.iterdir():
            path.unlink()
    return Timed(result.seconds, result.returncode, result.output_tail + (f"\n{left} file(s) left" if left else ""))


@dataclass
class Threads:
    """What one side made of the messages."""

    threads: int = 0  # tickets / cases
    stored_messages: int = 0  # inbound messages / follow-ups found for the generated files
    replies_in_parent: int = 0
    replies_elsewhere: int = 0  # landed in a thread, but not their request's
    replies_new_thread: int = 0
    replies_missing: int = 0
    attachments: int = 0
    bin_attachments: int = 0
    outgoing: int = 0  # mail composed: files written by django-helpdesk, outbox rows of the gateway
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}


def judge_replies(
    threads: Threads, thread_of: dict[str, str], replies: Sequence[Reply], first_in: dict[str, str]
) -> None:
    """Count where each reply landed; first_in: thread -> Message-ID of the message that opened it."""
    for reply in replies:
        mine, parents = thread_of.get(bare(reply_message_id(reply))), thread_of.get(bare(reply.parent.message_id))
        if mine is None:
            threads.replies_missing += 1
        elif mine == parents:
            threads.replies_in_parent += 1
        elif first_in.get(mine) == bare(reply_message_id(reply)):
            threads.replies_new_thread += 1
        else:
            threads.replies_elsewhere += 1


def helpdesk_threads(root: Path, replies: Sequence[Reply]) -> Threads:
    connection = sqlite3.connect(f"file:{root / 'helpdesk.sqlite3'}?mode=ro", uri=True)
    try:
        threads = Threads(threads=connection.execute("SELECT count(*) FROM helpdesk_ticket").fetchone()[0])
        rows = connection.execute("SELECT message_id, ticket_id FROM helpdesk_followup ORDER BY id").fetchall()
        names = [row[0] for row in connection.execute("SELECT filename FROM helpdesk_followupattachment")]
    finally:
        connection.close()
    thread_of: dict[str, str] = {}
    first_in: dict[str, str] = {}
    for message_id, ticket in rows:
        thread_of.setdefault(bare(message_id), str(ticket))
        first_in.setdefault(str(ticket), bare(message_id))
    threads.stored_messages = len(rows)
    judge_replies(threads, thread_of, replies, first_in)
    threads.attachments = len(names)
    threads.bin_attachments = sum(1 for name in names if str(name).endswith(".bin"))
    sent = root / "sent"
    threads.outgoing = (
        sum(path.read_bytes().count(b"\nMessage-ID: ") for path in sent.iterdir()) if sent.exists() else 0
    )
    return threads


def helpdesk_ticket_ids(root: Path) -> dict[str, int]:
    """Request Message-ID (with brackets) -> the ticket id django-helpdesk gave it."""
    connection = sqlite3.connect(f"file:{root / 'helpdesk.sqlite3'}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT message_id, ticket_id FROM helpdesk_followup").fetchall()
    finally:
        connection.close()
    return {f"<{bare(message_id)}>": int(ticket) for message_id, ticket in rows if message_id}


# --------------------------------------------------------------------------------------------
# The gateway


def gateway_environment(workdir: Path, dns: str, messages: int) -> dict[str, str]:
    env = gateway_env(
        workdir,
        free_port(),
        free_port(),
        GATEWAY_DNS_RESOLVER=dns,
        GATEWAY_STAFF_QUEUE_ADDRESS=STAFF_ADDRESS,
        # django-helpdesk acknowledges every request; so must the gateway here (default cap: 300 an hour).
        GATEWAY_AUTO_REPLIES_PER_HOUR=str(10 * messages),
    )
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")])
    )
    return env


def gateway_round(env: dict[str, str], source: Path, cwd: Path) -> Timed:
    return timed([sys.executable, "-m", "gateway", "ingest", "--notify", str(source)], cwd=cwd, env=env)


def gateway_export(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "export"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=SETUP_TIMEOUT_S,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def gateway_case_numbers(cases: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Inbound Message-ID (with brackets) -> case number."""
    numbers: dict[str, str] = {}
    for case in cases:
        for message in case.get("messages", []):
            if message.get("direction") == "inbound" and message.get("message_id"):
                numbers.setdefault(f"<{bare(message['message_id'])}>", str(case["number"]))
    return numbers


def gateway_threads(cases: Sequence[dict[str, Any]], replies: Sequence[Reply], workdir: Path) -> Threads:
    threads = Threads(threads=len(cases))
    thread_of: dict[str, str] = {}
    first_in: dict[str, str] = {}
    for case in cases:
        inbound = [m for m in case.get("messages", []) if m.get("direction") == "inbound"]
        if inbound:
            first_in[str(case["number"])] = bare(inbound[0].get("message_id"))
        for message in inbound:
            threads.stored_messages += 1
            thread_of.setdefault(bare(message.get("message_id")), str(case["number"]))
            kept = [a for a in message.get("attachments", []) if not a.get("refused")]
            threads.attachments += len(kept)
            threads.bin_attachments += sum(1 for a in kept if str(a.get("filename") or "").endswith(".bin"))
    judge_replies(threads, thread_of, replies, first_in)
    # Acknowledgements, staff notifications and notices alike are rows of the outbox (sent later by serve).
    threads.outgoing = count_rows(sqlite_read_only_url(workdir / "gw.db"), "outbox_item") or 0
    return threads


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Side:
    name: str
    rounds: list[Timed] = field(default_factory=list)
    threads: Threads = field(default_factory=Threads)

    @property
    def seconds(self) -> float:
        return sum(round_.seconds for round_ in self.rounds)

    def msg_per_s(self, messages: int) -> float:
        return messages / self.seconds if self.seconds > 0 else float("nan")


def run(options: Options, tmp: Path, console: Console) -> tuple[str, Side, Side]:
    version = ensure_peer(console)
    requests_dir, replies_dir = tmp / "files" / "1-requests", tmp / "files" / "2-replies"
    request_count = options.messages // 2
    console.log(f"writing {request_count} requests")
    requests = write_requests(requests_dir, request_count)
    replies = plan_replies(requests, options.messages - request_count)
    helpdesk_root, mailbox = tmp / "helpdesk", tmp / "helpdesk" / "mailbox"
    helpdesk_root.mkdir()
    console.log("migrating django-helpdesk's database")
    project = make_project(helpdesk_root, mailbox)
    gateway_dir = tmp / "gateway"
    gateway_dir.mkdir()
    helpdesk, gateway = Side("django-helpdesk"), Side("gateway")
    with local_dns() as dns:
        env = gateway_environment(gateway_dir, dns, options.messages)
        console.log("round 1: requests")
        helpdesk.rounds.append(helpdesk_round(project, mailbox, requests_dir))
        gateway.rounds.append(gateway_round(env, requests_dir, gateway_dir))
        # The customers answer what each side sent them: its tag is in their subject.
        tickets = helpdesk_ticket_ids(helpdesk_root)
        numbers = gateway_case_numbers(gateway_export(env, gateway_dir))
        tags: dict[str, list[str]] = {}
        for request in requests:
            if request.message_id in tickets:
                tags.setdefault(request.message_id, []).append(f"[{QUEUE_SLUG}-{tickets[request.message_id]}]")
            if request.message_id in numbers:
                tags.setdefault(request.message_id, []).append(f"[#{numbers[request.message_id]}]")
        write_replies(replies_dir, replies, tags)
        console.log("round 2: replies")
        helpdesk.rounds.append(helpdesk_round(project, mailbox, replies_dir))
        gateway.rounds.append(gateway_round(env, replies_dir, gateway_dir))
        gateway.threads = gateway_threads(gateway_export(env, gateway_dir), replies, gateway_dir)
    helpdesk.threads = helpdesk_threads(helpdesk_root, replies)
    for side in (helpdesk, gateway):
        for number, round_ in enumerate(side.rounds, 1):
            console.log(f"{side.name} round {number}: {round_.seconds:.1f} s, exit {round_.returncode}")
            if round_.returncode != 0:
                side.threads.notes.append(f"round {number} exited {round_.returncode}: {round_.output_tail}")
    return version, helpdesk, gateway


# --------------------------------------------------------------------------------------------
# Report


def figures(options: Options, version: str, helpdesk: Side, gateway: Side) -> dict[str, Any]:
    ratio = ratio_or_nan(gateway.msg_per_s(options.messages), helpdesk.msg_per_s(options.messages))

    def side(one: Side) -> dict[str, Any]:
        return {
            "seconds": round(one.seconds, 2),
            "rounds_s": [round(r.seconds, 2) for r in one.rounds],
            "exit_statuses": [r.returncode for r in one.rounds],
            "output_tail": [r.output_tail for r in one.rounds],
            "msg_per_s": rounded(one.msg_per_s(options.messages), 1),
            **one.threads.as_dict(),
        }

    return {
        "peer": {"package": PEER, "installed_version": version},
        "messages": {
            "total": options.messages,
            "requests": options.messages // 2,
            "replies": options.messages - options.messages // 2,
            "with_40kb_pdf": sum(1 for i in range(options.messages) if i % 10 == 3),
            "with_bin": sum(1 for i in range(options.messages) if i % 20 == 7),
        },
        "django_helpdesk": side(helpdesk),
        "gateway": side(gateway),
        "target": {
            "gateway_over_helpdesk": rounded(ratio, 2),
            "required": TARGET_RATIO,
            "verdict": verdict(None if math.isnan(ratio) else ratio >= TARGET_RATIO),
        },
    }


def render_table(data: dict[str, Any]) -> Table:
    messages = data["messages"]
    table = Table(
        title=f"{messages['total']} messages ({messages['replies']} replies): "
        f"django-helpdesk get_email vs gateway ingest --notify",
        title_justify="left",
    )
    for name in (
        "",
        "s (requests + replies)",
        "msg/s",
        "threads",
        "replies in their thread",
        "in a new thread",
        "elsewhere",
        "missing",
        "attachments kept",
        ".bin kept",
        "mail composed",
    ):
        table.add_column(name, justify="left" if not name else "right")
    for label, key in (("django-helpdesk", "django_helpdesk"), ("gateway", "gateway")):
        row = data[key]
        table.add_row(
            label,
            f"{row['seconds']:.1f} ({' + '.join(f'{s:.1f}' for s in row['rounds_s'])})",
            f"{row['msg_per_s']:,.1f}",
            str(row["threads"]),
            f"{row['replies_in_parent']}/{messages['replies']}",
            str(row["replies_new_thread"]),
            str(row["replies_elsewhere"]),
            str(row["replies_missing"]),
            str(row["attachments"]),
            f"{row['bin_attachments']}/{messages['with_bin']}",
            str(row["outgoing"]),
        )
    return table


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Options:
    messages: int
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench peer_helpdesk", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages instead of {MESSAGES}")
    parser.add_argument(
        "--messages", type=int, help="messages in all, half requests and half replies (overrides --quick)"
    )
    add_run_options(
        parser, NAME, keep_tmp_help="keep the generated files, both databases and the logs", no_pin_help=None
    )
    args = parser.parse_args(argv)
    messages = args.messages or (QUICK_MESSAGES if args.quick else MESSAGES)
    if not 2 <= messages <= 20000:
        parser.error("--messages between 2 and 20000")
    return Options(messages=messages, out=args.out, keep_tmp=args.keep_tmp)


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    clock = RunClock.start()
    with scratch_dir("bench-peer-", keep=options.keep_tmp, console=console) as tmp:
        try:
            version, helpdesk, gateway = run(options, tmp, console)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            console.print(f"[red]could not run:[/red] {error}")
            return 1
    data = figures(options, version, helpdesk, gateway)
    console.print(render_table(data))
    for key in ("django_helpdesk", "gateway"):
        for note in data[key]["notes"]:
            console.print(f"[yellow]{key}:[/yellow] {note}")
    target = data["target"]
    shown = "not measured" if target["gateway_over_helpdesk"] is None else f"{target['gateway_over_helpdesk']:.2f}×"
    console.print(
        f"{verdict_markup(target['verdict'])}: gateway ingest --notify ran at {shown} django-helpdesk's get_email "
        f"(target: at least {TARGET_RATIO:g}×)"
    )
    clock.print_footer(console, None)
    settings = {"messages": options.messages, "peer": PEER, "pinning": "not pinned"}
    write_report(console, options.out, NAME, settings, clock, **data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
