"""The JSON shapes of SPEC §2 (`cases list/show --json`, `export`), built from stored rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from store import cases
from store.models import Attachment, Case, Message


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def case_summary(case: Case) -> dict[str, Any]:
    return {
        "number": case.number,
        "subject": case.subject,
        "status": case.status,
        "requester": case.requester,
        "category": case.category,
        "service": case.service_id,
        "account": case.account_id,
        "created_at": _iso(case.created_at),
        "updated_at": _iso(case.updated_at),
        "message_count": case.message_count,
        # A tombstone left by `gateway erase`: the number stays, the person's data is gone.
        "erased_at": _iso(case.erased_at),
    }


def attachment_view(attachment: Attachment) -> dict[str, Any]:
    return {
        "id": attachment.id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "refused": attachment.refused,
        "reason": attachment.reason,
        "inline": attachment.inline,
        "content_id": attachment.content_id,
    }


def message_view(message: Message, attachments: list[Attachment]) -> dict[str, Any]:
    return {
        "direction": message.direction,
        "source": message.source,
        "message_id": message.message_id,
        "from": message.from_header,
        "to": message.to_header,
        "cc": message.cc_header,
        "subject": message.subject,
        "date": _iso(message.date or message.created_at),
        "text": message.text,
        "auto_generated": message.auto_generated,
        "raw_sha256": message.raw_sha256,
        "delivery_status": message.delivery_status,
        "defects": message.defects,
        # Sender trust (README "Sender trust"): None for our own mail.
        "sender_authenticated": message.trust.get("sender_authenticated") if message.trust else None,
        "authentication": message.trust,
        "attachments": [attachment_view(attachment) for attachment in attachments],
    }


def case_detail(*, session: Session, case: Case) -> dict[str, Any]:
    messages = cases.case_messages(session=session, case_id=case.id or 0)
    by_message = cases.message_attachments(session=session, message_ids=[m.id or 0 for m in messages])
    return {
        **case_summary(case),
        "messages": [message_view(message, by_message.get(message.id or 0, [])) for message in messages],
    }
