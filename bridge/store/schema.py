"""The call log's tables (SQLAlchemy Core): one row per call, its turns, events and tool calls.

Times are epoch seconds (`started_at`, `ended_at` ...) or seconds since the call started (turn,
event and tool call times), as in `bridge.record`; both backends store them as double precision.
Migrations in `bridge/store/migrations` create exactly these tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_sid", sa.String(64), primary_key=True),
    sa.Column("stream_sid", sa.String(64), nullable=False, server_default=""),
    sa.Column("direction", sa.String(32), nullable=False, server_default=""),
    sa.Column("from_number", sa.String(64), nullable=False, server_default=""),
    sa.Column("to_number", sa.String(64), nullable=False, server_default=""),
    sa.Column("profile", sa.String(128), nullable=False, server_default=""),
    sa.Column("model", sa.String(128), nullable=False, server_default=""),
    sa.Column("voice", sa.String(64), nullable=False, server_default=""),
    sa.Column("keep_transcripts", sa.Boolean, nullable=False, server_default=sa.true()),
    # Earliest known moment of the call: Twilio's initiated/ringing time, else the stream start.
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("answered_at", sa.Double),  # the Media Stream started: audio flows both ways
    sa.Column("ended_at", sa.Double),
    sa.Column("duration_s", sa.Double),  # stream start to end (what the assistant was on for)
    sa.Column("end_reason", sa.String(32)),
    sa.Column("end_detail", sa.Text, nullable=False, server_default=""),
    sa.Column("twilio_status", sa.String(32)),  # Twilio's last (final once ended) CallStatus
    sa.Column("twilio_duration_s", sa.Integer),  # Twilio's CallDuration (billed seconds)
    sa.Column("frames_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("frames_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("barge_ins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("text_only_recoveries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("protocol_errors", sa.Integer, nullable=False, server_default="0"),
    sa.Column("errors", sa.Integer, nullable=False, server_default="0"),  # error events
    sa.Column("usage", JSON, nullable=False, server_default="{}"),  # tokens by kind
    sa.Column("cost_usd", sa.Double),  # estimate from the price table; NULL: no price known
    sa.Column("tool_calls", sa.Integer, nullable=False, server_default="0"),  # count
    sa.Column("transfer_to", sa.String(64), nullable=False, server_default=""),  # destination
    sa.Column("transfer_number", sa.String(64), nullable=False, server_default=""),
    # The call's WAV (bridge/recording): its key in the recording store; NULL when not recorded.
    sa.Column("recording", sa.String(512)),
    sa.Column("recording_bytes", sa.BigInteger),
    sa.Column("instance", sa.String(64), nullable=False, server_default=""),  # which replica
    sa.Column("updated_at", sa.Double, nullable=False),
)
sa.Index("ix_calls_started_at", calls.c.started_at, calls.c.call_sid)
sa.Index("ix_calls_to_number", calls.c.to_number, calls.c.started_at)
sa.Index("ix_calls_from_number", calls.c.from_number, calls.c.started_at)
sa.Index("ix_calls_profile", calls.c.profile)
sa.Index("ix_calls_end_reason", calls.c.end_reason)

turns = sa.Table(
    "turns",
    metadata,
    sa.Column(
        "call_sid",
        sa.String(64),
        sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("item_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),  # order within the call
    sa.Column("role", sa.String(16), nullable=False),  # caller | assistant
    sa.Column("source", sa.String(16), nullable=False, server_default="model"),
    sa.Column("started_at", sa.Double, nullable=False),  # seconds since the call started
    sa.Column("ended_at", sa.Double),
    sa.Column("text", sa.Text),  # NULL when the profile keeps no transcripts
    sa.Column("interrupted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("heard_ms", sa.Integer),  # assistant: audio the caller heard (NULL: all of it)
    sa.Column("audio_ms", sa.Double, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.Double),  # caller stopped speaking -> first reply audio played
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "call_sid",
        sa.String(64),
        sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("seq", sa.Integer),  # place in the call's events (History.seq); NULL: Twilio's
    sa.Column("at", sa.Double),  # seconds since the call started, when known
    sa.Column("ts", sa.Double, nullable=False),  # epoch seconds
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("detail", JSON, nullable=False, server_default="{}"),
    sa.UniqueConstraint("call_sid", "seq", name="uq_events_call_seq"),
)
sa.Index("ix_events_call_sid", events.c.call_sid, events.c.ts)

# Actions and tools run on a call (`bridge.record.ToolCall`), in the order they started.
tool_calls = sa.Table(
    "tool_calls",
    metadata,
    sa.Column(
        "call_sid",
        sa.String(64),
        sa.ForeignKey("calls.call_sid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("call_id", sa.String(128), primary_key=True),  # the model's (keypad: key_<n>)
    sa.Column("seq", sa.Integer, nullable=False),  # order within the call
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # end_call, transfer_call, http, mcp, keypad
    sa.Column("arguments", sa.Text),  # NULL when the profile keeps no transcripts
    sa.Column("started_at", sa.Double, nullable=False),  # seconds since the call started
    sa.Column("ended_at", sa.Double),
    sa.Column("duration_ms", sa.Double),
    sa.Column("outcome", sa.String(16), nullable=False, server_default="running"),
    sa.Column("result", sa.Text),  # NULL when the profile keeps no transcripts
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("holding_phrase", sa.Boolean, nullable=False, server_default=sa.false()),
)

# What Twilio does once a call's stream has ended (`bridge.after_stream.NextStep` as JSON),
# saved by the worker that ran the call and read by whichever worker gets Twilio's action
# request. No foreign key: the call row is written in the background and may come later.
next_steps = sa.Table(
    "next_steps",
    metadata,
    sa.Column("call_sid", sa.String(64), primary_key=True),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),  # epoch seconds; pruned after an hour
    sa.Column("instance", sa.String(64), nullable=False, server_default=""),  # which replica
)
sa.Index("ix_next_steps_created_at", next_steps.c.created_at)

# Media Stream tokens already used (bridge.signatures): one row per token, shared by every
# worker and replica, so a token opens one stream only. `token_key` is the SHA-256 of the token
# (never the token); rows are deleted some time after `expires_at`.
stream_tokens = sa.Table(
    "stream_tokens",
    metadata,
    sa.Column("token_key", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("call_sid", sa.String(64), nullable=False, server_default=""),
    sa.Column("instance", sa.String(64), nullable=False, server_default=""),  # which replica
)
sa.Index("ix_stream_tokens_expires_at", stream_tokens.c.expires_at)

# The post-call webhook's outbox (bridge/webhooks): one row per delivery, written with the
# call's final row, so a delivery survives a restart; a worker claims a row (`claimed_by`,
# `claimed_until`) before sending, so each attempt is made by one worker or replica. `body` is
# fixed at the first attempt: every retry sends the same bytes with the same `delivery_id`.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
    sa.Column(
        "call_sid", sa.String(64), sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), index=True
    ),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("last_attempt_at", sa.Double),
    sa.Column("last_status", sa.Integer),  # the receiver's HTTP status; NULL: no answer
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Column("delivered_at", sa.Double),
    sa.Column("claimed_by", sa.String(64), nullable=False, server_default=""),
    sa.Column("claimed_until", sa.Double),
    sa.Column("body", sa.Text),
)
sa.Index("ix_webhook_outbox_due", webhook_outbox.c.state, webhook_outbox.c.next_attempt_at)

# Event kinds that count as something going wrong on the call.
ERROR_KINDS = frozenset(
    {
        "upstream_error",
        "upstream_protocol_error",
        "protocol_error",
        "response_failed",
        "tts_failed",
        "stream_error",
    }
)
