"""sender trust: the verdict on each message's sender; an index for the global hourly count of automatic mail

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.add_column(sa.Column("trust", sa.JSON(), nullable=True))
    op.create_index("ix_outbox_item_created_at", "outbox_item", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_item_created_at", table_name="outbox_item")
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_column("trust")
