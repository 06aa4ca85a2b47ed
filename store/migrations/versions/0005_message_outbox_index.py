"""message.outbox_id indexed: the outbox worker finds the case message of every mail it sends

Each send (and each failure) updates the delivery status of the case message that carries the
outbox row; without an index that UPDATE read the whole message table, once per outgoing mail,
while holding SQLite's write lock.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_message_outbox_id", "message", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_message_outbox_id", table_name="message")
