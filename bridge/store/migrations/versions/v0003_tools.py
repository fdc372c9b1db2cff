"""Tool calls and transfers on the call log; next steps shared between workers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:  # SQLite: plain ADD COLUMN, no copy needed
        batch.add_column(sa.Column("tool_calls", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("transfer_to", sa.String(64), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("transfer_number", sa.String(64), nullable=False, server_default="")
        )
    op.create_table(
        "tool_calls",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("arguments", sa.Text),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double),
        sa.Column("duration_ms", sa.Double),
        sa.Column("outcome", sa.String(16), nullable=False, server_default="running"),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("holding_phrase", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "next_steps",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("instance", sa.String(64), nullable=False, server_default=""),
    )
    op.create_index("ix_next_steps_created_at", "next_steps", ["created_at"])


def downgrade() -> None:
    op.drop_table("next_steps")
    op.drop_table("tool_calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("transfer_number")
        batch.drop_column("transfer_to")
        batch.drop_column("tool_calls")
