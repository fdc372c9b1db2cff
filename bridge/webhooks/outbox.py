"""The webhook outbox in the call log's database: enqueue, claim, record each attempt, list.

A delivery is a row in `webhook_outbox` (bridge/store/schema.py). The call log's writer queues
it in the transaction that writes the call's final row, so a finished call and its delivery
exist together or not at all. Every replica's sender claims due rows with a conditional UPDATE
(`claimed_by`, `claimed_until`): the statement that flips an unclaimed row is atomic on SQLite
and PostgreSQL, so each attempt is made by one sender; a sender that dies mid-attempt loses its
claim when the lease runs out and another retries.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.store.schema import calls, webhook_outbox

State = Literal["pending", "delivered", "failed"]
STATES: tuple[State, ...] = ("pending", "delivered", "failed")
MAX_ERROR = 500  # characters of the last error kept on the row

_T = webhook_outbox.c


class UnknownCall(LookupError):
    """`redeliver` of a call the call log does not have."""


class NoUrl(LookupError):
    """`redeliver` of a call that never had a webhook URL, and none was given."""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One row of the outbox."""

    id: int
    delivery_id: str
    call_sid: str
    url: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_attempt_at: float | None
    last_status: int | None
    last_error: str
    delivered_at: float | None
    claimed_by: str
    claimed_until: float | None
    body: str | None

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        values = row._mapping
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


def new_delivery_id() -> str:
    return uuid.uuid4().hex


def _row(call_sid: str, url: str, now: float) -> dict[str, Any]:
    return {
        "delivery_id": new_delivery_id(),
        "call_sid": call_sid,
        "url": url,
        "created_at": now,
        "next_attempt_at": now,
    }


def enqueue_row(call_sid: str, url: str, now: float) -> dict[str, Any]:
    """The parameters of `enqueue_first` for one finished call."""
    return _row(call_sid, url, now)


def _enqueue_first() -> sa.Insert:
    """INSERT ... SELECT ... WHERE NOT EXISTS: a call's first delivery, queued once however
    often its final row is written (a repeated write, or a batch sent again after a lost
    commit). Casts on the binds: PostgreSQL cannot infer types in a bare SELECT list."""
    call_sid = sa.bindparam("call_sid", type_=sa.String(64))
    values = sa.select(
        sa.cast(sa.bindparam("delivery_id", type_=sa.String(64)), sa.String(64)),
        sa.cast(call_sid, sa.String(64)),
        sa.cast(sa.bindparam("url", type_=sa.Text), sa.Text),
        sa.cast(sa.bindparam("created_at", type_=sa.Double), sa.Double),
        sa.cast(sa.bindparam("next_attempt_at", type_=sa.Double), sa.Double),
    ).where(~sa.exists(sa.select(_T.id).where(_T.call_sid == call_sid)))
    columns = ["delivery_id", "call_sid", "url", "created_at", "next_attempt_at"]
    return sa.insert(webhook_outbox).from_select(columns, values)


ENQUEUE_FIRST = _enqueue_first()


async def enqueue_first(connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Queue the first delivery of each call (rows from `enqueue_row`), in the caller's
    transaction; a call that already has a delivery is left alone."""
    for row in rows:
        await connection.execute(ENQUEUE_FIRST, row)


async def redeliver(
    engine: AsyncEngine, call_sid: str, now: float, url: str | None = None
) -> Delivery:
    """Queue a new delivery of a call (its own id, its body built afresh), due now.

    The URL: `url`, else the one the call's last delivery went to. UnknownCall, NoUrl.
    """
    async with engine.begin() as connection:
        known = await connection.scalar(
            sa.select(calls.c.call_sid).where(calls.c.call_sid == call_sid)
        )
        if known is None:
            raise UnknownCall(call_sid)
        if url is None:
            url = await connection.scalar(
                sa.select(_T.url).where(_T.call_sid == call_sid).order_by(_T.id.desc()).limit(1)
            )
        if not url:
            raise NoUrl(call_sid)
        row = _row(call_sid, url, now)
        await connection.execute(sa.insert(webhook_outbox).values(**row))
        found = await connection.execute(
            sa.select(webhook_outbox).where(_T.delivery_id == row["delivery_id"])
        )
        return Delivery.from_row(found.one())


def _claimable(now: float) -> sa.ColumnElement[bool]:
    return sa.and_(
        _T.state == "pending",
        _T.next_attempt_at <= now,
        sa.or_(_T.claimed_until.is_(None), _T.claimed_until < now),
    )


async def claim_due(
    engine: AsyncEngine, sender: str, now: float, lease: float, limit: int
) -> list[Delivery]:
    """Claim up to `limit` due deliveries for `sender` until `now + lease`.

    Each row is taken by a conditional UPDATE that only matches it while it is pending, due and
    unclaimed; of several senders racing for a row, exactly one sees rowcount 1.
    """
    async with engine.connect() as connection:
        due = await connection.scalars(
            sa.select(_T.id).where(_claimable(now)).order_by(_T.next_attempt_at, _T.id).limit(limit)
        )
        candidates = sorted(due)  # rows locked in id order: racing senders never deadlock
    if not candidates:
        return []
    claimed: list[int] = []
    async with engine.begin() as connection:
        for row_id in candidates:
            result = await connection.execute(
                sa.update(webhook_outbox)
                .where(_T.id == row_id, _claimable(now))
                .values(claimed_by=sender, claimed_until=now + lease)
            )
            if result.rowcount == 1:
                claimed.append(row_id)
        if not claimed:
            return []
        rows = await connection.execute(
            sa.select(webhook_outbox).where(_T.id.in_(claimed)).order_by(_T.next_attempt_at)
        )
        return [Delivery.from_row(row) for row in rows]


async def store_body(engine: AsyncEngine, row_id: int, body: str) -> str:
    """Fix the body at the first attempt; returns the stored body (the first one written)."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(webhook_outbox).where(_T.id == row_id, _T.body.is_(None)).values(body=body)
        )
        stored = await connection.scalar(sa.select(_T.body).where(_T.id == row_id))
    return stored if stored is not None else body


async def mark_delivered(engine: AsyncEngine, row_id: int, now: float, status: int) -> bool:
    """The receiver took it. Whoever made the attempt, a pending row is now delivered."""
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(webhook_outbox)
            .where(_T.id == row_id, _T.state == "pending")
            .values(
                state="delivered",
                attempts=_T.attempts + 1,
                last_attempt_at=now,
                last_status=status,
                last_error="",
                delivered_at=now,
                claimed_by="",
                claimed_until=None,
            )
        )
    return bool(result.rowcount == 1)


async def mark_attempt_failed(
    engine: AsyncEngine,
    row_id: int,
    sender: str,
    now: float,
    *,
    status: int | None,
    error: str,
    retry_at: float | None,
) -> bool:
    """A failed attempt: due again at `retry_at`, or given up (`failed`) when it is None.

    Only the claim holder records it: a sender whose lease ran out leaves the row to the one
    that took it over.
    """
    values: dict[str, Any] = {
        "attempts": _T.attempts + 1,
        "last_attempt_at": now,
        "last_status": status,
        "last_error": error[:MAX_ERROR],
        "claimed_by": "",
        "claimed_until": None,
    }
    if retry_at is None:
        values["state"] = "failed"
    else:
        values["next_attempt_at"] = retry_at
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(webhook_outbox)
            .where(_T.id == row_id, _T.state == "pending", _T.claimed_by == sender)
            .values(**values)
        )
    return bool(result.rowcount == 1)


async def release(engine: AsyncEngine, sender: str) -> int:
    """Give back every claim `sender` holds (shutdown): others may retry them at once."""
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(webhook_outbox)
            .where(_T.claimed_by == sender, _T.state == "pending")
            .values(claimed_by="", claimed_until=None)
        )
    return int(result.rowcount)


async def backlog(engine: AsyncEngine) -> int:
    """Deliveries still pending (for the backlog gauge)."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            sa.select(sa.func.count()).select_from(webhook_outbox).where(_T.state == "pending")
        )
    return int(count or 0)


async def next_due(engine: AsyncEngine) -> float | None:
    """When the earliest pending delivery can next be claimed (epoch seconds), if any."""
    ready = sa.case(
        (
            sa.and_(_T.claimed_until.is_not(None), _T.claimed_until > _T.next_attempt_at),
            _T.claimed_until,
        ),
        else_=_T.next_attempt_at,
    )
    async with engine.connect() as connection:
        value = await connection.scalar(sa.select(sa.func.min(ready)).where(_T.state == "pending"))
    return float(value) if value is not None else None


async def list_deliveries(
    engine: AsyncEngine, *, state: str | None = None, call_sid: str | None = None, limit: int = 50
) -> list[Delivery]:
    """Deliveries, newest first."""
    statement = sa.select(webhook_outbox)
    if state:
        statement = statement.where(_T.state == state)
    if call_sid:
        statement = statement.where(_T.call_sid == call_sid)
    statement = statement.order_by(_T.created_at.desc(), _T.id.desc()).limit(max(1, limit))
    async with engine.connect() as connection:
        rows = await connection.execute(statement)
        return [Delivery.from_row(row) for row in rows]
