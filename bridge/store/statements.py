"""The writer's upserts, built once per dialect (SQLite and PostgreSQL share the syntax).

Every statement is idempotent, so a batch that failed half-way (or whose commit was lost with
the connection) can be sent again as it is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bridge.store.rows import FINAL_STATUSES
from bridge.store.schema import calls, events, tool_calls, turns

# Columns the call record owns; Twilio's status columns are written by status callbacks only.
RECORD_COLUMNS = (
    "stream_sid",
    "direction",
    "from_number",
    "to_number",
    "profile",
    "model",
    "voice",
    "keep_transcripts",
    "answered_at",
    "ended_at",
    "duration_s",
    "end_reason",
    "end_detail",
    "frames_in",
    "frames_out",
    "barge_ins",
    "text_only_recoveries",
    "protocol_errors",
    "errors",
    "usage",
    "cost_usd",
    "tool_calls",
    "transfer_to",
    "transfer_number",
    "recording",
    "recording_bytes",
    "instance",
    "updated_at",
)


class Statements:
    def __init__(self, dialect: str) -> None:
        insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.upsert_call = _upsert_call(insert(calls))
        self.upsert_status = _upsert_status(insert(calls))
        stmt = insert(turns)
        self.upsert_turn = stmt.on_conflict_do_update(
            index_elements=[turns.c.call_sid, turns.c.item_id],
            set_={c.name: stmt.excluded[c.name] for c in turns.c if not c.primary_key},
        )
        stmt = insert(tool_calls)
        self.upsert_tool_call = stmt.on_conflict_do_update(
            index_elements=[tool_calls.c.call_sid, tool_calls.c.call_id],
            set_={c.name: stmt.excluded[c.name] for c in tool_calls.c if not c.primary_key},
        )
        self.insert_record_event = insert(events).on_conflict_do_nothing(
            index_elements=[events.c.call_sid, events.c.seq]
        )
        self.insert_event = sa.insert(events)


def _earliest(excluded: Any) -> sa.ColumnElement[Any]:
    return sa.case(
        (excluded.started_at < calls.c.started_at, excluded.started_at),
        else_=calls.c.started_at,
    )


def _upsert_call(stmt: Any) -> Any:
    excluded = stmt.excluded
    update: dict[str, Any] = {name: excluded[name] for name in RECORD_COLUMNS}
    update["started_at"] = _earliest(excluded)
    return stmt.on_conflict_do_update(index_elements=[calls.c.call_sid], set_=update)


def _final(column: Any) -> sa.ColumnElement[bool]:
    # Inline constants: an IN list would be an "expanding" parameter, refused by executemany.
    return sa.or_(*(column == sa.literal_column(f"'{status}'") for status in FINAL_STATUSES))


def _upsert_status(stmt: Any) -> Any:
    """Twilio's status: a final status is never replaced by a late non-final one."""
    excluded = stmt.excluded
    keep = sa.or_(
        excluded.twilio_status.is_(None),
        sa.and_(_final(calls.c.twilio_status), sa.not_(_final(excluded.twilio_status))),
    )
    update: dict[str, Any] = {
        "twilio_status": sa.case((keep, calls.c.twilio_status), else_=excluded.twilio_status),
        "twilio_duration_s": sa.func.coalesce(
            excluded.twilio_duration_s, calls.c.twilio_duration_s
        ),
        "started_at": _earliest(excluded),
    }
    for name in ("from_number", "to_number", "direction", "profile", "end_detail"):
        update[name] = sa.case((calls.c[name] == "", excluded[name]), else_=calls.c[name])
    update["end_reason"] = sa.func.coalesce(calls.c.end_reason, excluded.end_reason)
    return stmt.on_conflict_do_update(index_elements=[calls.c.call_sid], set_=update)
