"""Call log: calls, turns, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("stream_sid", sa.String(64), nullable=False, server_default=""),
        sa.Column("direction", sa.String(32), nullable=False, server_default=""),
        sa.Column("from_number", sa.String(64), nullable=False, server_default=""),
        sa.Column("to_number", sa.String(64), nullable=False, server_default=""),
        sa.Column("profile", sa.String(128), nullable=False, server_default=""),
        sa.Column("model", sa.String(128), nullable=False, server_default=""),
        sa.Column("voice", sa.String(64), nullable=False, server_default=""),
        sa.Column("keep_transcripts", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("answered_at", sa.Double),
        sa.Column("ended_at", sa.Double),
        sa.Column("duration_s", sa.Double),
        sa.Column("end_reason", sa.String(32)),
        sa.Column("end_detail", sa.Text, nullable=False, server_default=""),
        sa.Column("twilio_status", sa.String(32)),
        sa.Column("twilio_duration_s", sa.Integer),
        sa.Column("frames_in", sa.Integer, nullable=False, server_default="0"),
        sa.Column("frames_out", sa.Integer, nullable=False, server_default="0"),
        sa.Column("barge_ins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("text_only_recoveries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("protocol_errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("usage", JSON, nullable=False, server_default="{}"),
        sa.Column("cost_usd", sa.Double),
        sa.Column("instance", sa.String(64), nullable=False, server_default=""),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at", "call_sid"])
    op.create_index("ix_calls_to_number", "calls", ["to_number", "started_at"])
    op.create_index("ix_calls_from_number", "calls", ["from_number", "started_at"])
    op.create_index("ix_calls_profile", "calls", ["profile"])
    op.create_index("ix_calls_end_reason", "calls", ["end_reason"])
    op.create_table(
        "turns",
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("item_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False, server_default="model"),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double),
        sa.Column("text", sa.Text),
        sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("heard_ms", sa.Integer),
        sa.Column("audio_ms", sa.Double, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Double),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_sid",
            sa.String(64),
            sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer),
        sa.Column("at", sa.Double),
        sa.Column("ts", sa.Double, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("detail", JSON, nullable=False, server_default="{}"),
        sa.UniqueConstraint("call_sid", "seq", name="uq_events_call_seq"),
    )
    op.create_index("ix_events_call_sid", "events", ["call_sid", "ts"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("turns")
    op.drop_table("calls")
