"""The call log's side of recordings: which recording a call has, and pruning them.

`prune_calls` deletes old calls and their recordings (the files first: a file whose row is gone
could never be found again; a row whose file is gone is answered with 404). `expire_recordings`
deletes only the recordings of calls whose profile's `recording_retention_days` has passed:
the call row stays, with `recording` and `recording_bytes` set to NULL.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.recording.store import RecordingMissing, RecordingStore
from bridge.store import queries
from bridge.store.schema import calls

DAY = 86400.0
BATCH = 500  # rows per UPDATE when recordings expire


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """A call's recording as the call log knows it."""

    call_sid: str
    key: str | None  # None: the call was not recorded (or its recording was deleted)
    size: int | None
    ended: bool  # False: the call may still be running, its file still growing


@dataclasses.dataclass(frozen=True, slots=True)
class Pruned:
    calls: int
    recordings: int


async def recording_of(engine: AsyncEngine, call_sid: str) -> Recorded | None:
    """The call's recording; None when there is no such call."""
    statement = sa.select(calls.c.recording, calls.c.recording_bytes, calls.c.ended_at).where(
        calls.c.call_sid == call_sid
    )
    async with engine.connect() as connection:
        row = (await connection.execute(statement)).first()
    if row is None:
        return None
    return Recorded(call_sid, row.recording or None, row.recording_bytes, row.ended_at is not None)


async def _keys(engine: AsyncEngine, *where: sa.ColumnElement[bool]) -> list[tuple[str, str]]:
    statement = (
        sa.select(calls.c.call_sid, calls.c.recording)
        .where(calls.c.recording.is_not(None), *where)
        .order_by(calls.c.started_at)
    )
    async with engine.connect() as connection:
        return [(row.call_sid, row.recording) for row in await connection.execute(statement)]


async def _delete(store: RecordingStore, key: str) -> None:
    with contextlib.suppress(RecordingMissing):  # not a key a store holds: no file to delete
        await store.delete(key)


async def prune_calls(
    engine: AsyncEngine, store: RecordingStore, before: float, *, dry_run: bool = False
) -> Pruned:
    """Delete calls that started before `before` (epoch seconds) with their recordings; with
    `dry_run`, count them only."""
    old = calls.c.started_at < before
    recorded = await _keys(engine, old)
    if dry_run:
        async with engine.connect() as connection:
            count = await connection.scalar(
                sa.select(sa.func.count()).select_from(calls).where(old)
            )
        return Pruned(int(count or 0), len(recorded))
    for _, key in recorded:
        await _delete(store, key)
    return Pruned(await queries.prune(engine, before), len(recorded))


def _past_retention(
    retention: Mapping[str, float | None], default: str, now: float, since: float | None
) -> list[tuple[str, sa.ColumnElement[bool]]]:
    """(profile, condition) for each profile with a retention: calls of a profile no longer in
    the numbers file (or of none) keep the default profile's."""
    conditions: list[tuple[str, sa.ColumnElement[bool]]] = []
    for name, days in sorted(retention.items()):
        if days is None:
            continue
        expired = calls.c.started_at < now - days * DAY
        if since is not None:  # older calls are pruned whole (a dry run counts them there)
            expired = sa.and_(expired, calls.c.started_at >= since)
        if name == default:
            others = [other for other in retention if other != default]
            conditions.append((name, sa.and_(calls.c.profile.not_in(others), expired)))
        else:
            conditions.append((name, sa.and_(calls.c.profile == name, expired)))
    return conditions


async def expire_recordings(
    engine: AsyncEngine,
    store: RecordingStore,
    retention: Mapping[str, float | None],
    default: str,
    now: float,
    *,
    since: float | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete the recordings (only those) of calls older than their profile's retention in
    days (`retention`: profile name -> days, None: kept until the call is pruned) that started
    at or after `since`; how many per profile. With `dry_run`, count them only."""
    expired: dict[str, int] = {}
    for name, condition in _past_retention(retention, default, now, since):
        found = await _keys(engine, condition)
        expired[name] = len(found)
        if dry_run:
            continue
        for start in range(0, len(found), BATCH):
            batch = found[start : start + BATCH]
            for _, key in batch:
                await _delete(store, key)
            async with engine.begin() as connection:
                await connection.execute(
                    sa.update(calls)
                    .where(calls.c.call_sid.in_([call_sid for call_sid, _ in batch]))
                    .values(recording=None, recording_bytes=None)
                )
    return expired
