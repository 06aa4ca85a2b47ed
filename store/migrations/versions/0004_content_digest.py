"""content digest: processed_entry remembers what a message was, not only its Message-ID

A duplicate is the same message (same sender, subject, bodies and attachments), not merely the same
Message-ID: senders reuse IDs. Rows processed before this migration have no digest and keep being
recognised by Message-ID and sender alone.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("processed_entry") as batch_op:
        batch_op.add_column(sa.Column("content_digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("processed_entry") as batch_op:
        batch_op.drop_column("content_digest")
