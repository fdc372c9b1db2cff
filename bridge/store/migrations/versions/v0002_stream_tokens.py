"""Stream tokens: the single-use record of the voice webhook's signed stream parameters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "stream_tokens",
        sa.Column("token_key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("call_sid", sa.String(64), nullable=False, server_default=""),
        sa.Column("instance", sa.String(64), nullable=False, server_default=""),
    )
    op.create_index("ix_stream_tokens_expires_at", "stream_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("stream_tokens")
