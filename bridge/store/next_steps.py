"""Next steps shared through the call log's database (`bridge.after_stream.NextSteps`).

A call saves its step just before it closes the Media Stream; Twilio then POSTs the action URL
at once, maybe to another worker or replica, which loads it. So `save` writes directly, not
through the background writer, and returns only once the row is committed (or raises). Rows
older than `KEEP_SECONDS` are deleted now and then by whichever process saves next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.after_stream import KEEP_SECONDS, NextStep
from bridge.errors import BridgeError
from bridge.store.database import describe
from bridge.store.schema import next_steps

logger = logging.getLogger(__name__)

SAVE_TIMEOUT = 2.0  # the call waits this long at most before it closes the stream
LOAD_TIMEOUT = 2.0  # Twilio waits for the action's TwiML; a hang-up is the fallback
PRUNE_EVERY = 300.0  # seconds between deletions of old rows, per process
UNAVAILABLE = (TimeoutError, OSError, sa.exc.SQLAlchemyError)


class NextStepsUnavailable(BridgeError):
    """The database could not save or read a next step (in time); `call_sid` says whose."""

    def __init__(self, call_sid: str, reason: str) -> None:
        super().__init__(f"next step of {call_sid}: {reason}")
        self.call_sid = call_sid
        self.reason = reason


class StoredNextSteps:
    """`save` a call's next step for any worker to `load`; the latest save wins."""

    def __init__(self, engine: AsyncEngine, instance: str = "") -> None:
        self.engine = engine
        self.instance = instance
        insert: Any = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(next_steps)
        self._upsert = stmt.on_conflict_do_update(
            index_elements=[next_steps.c.call_sid],
            set_={name: stmt.excluded[name] for name in ("step", "created_at", "instance")},
        )
        self._pruned_at = float("-inf")

    async def save(self, call_sid: str, step: NextStep, *, now: float | None = None) -> None:
        """Store `step` for `call_sid`, committed on return.

        Raises NextStepsUnavailable if the database does not take it within SAVE_TIMEOUT.
        """
        now = time.time() if now is None else now
        row = {
            "call_sid": call_sid[:64],
            "step": step.to_json(),
            "created_at": now,
            "instance": self.instance[:64],
        }
        try:
            async with asyncio.timeout(SAVE_TIMEOUT), self.engine.begin() as connection:
                await connection.execute(self._upsert, row)
        except UNAVAILABLE as exc:
            raise NextStepsUnavailable(call_sid, describe(exc)) from exc
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            await self._prune(now - KEEP_SECONDS)

    async def _prune(self, before: float) -> None:
        """Delete rows saved before `before`, in a transaction of its own (the step above is
        committed already: failing here must not make the call think it was not saved)."""
        old = next_steps.c.created_at < before
        try:
            async with asyncio.timeout(SAVE_TIMEOUT), self.engine.begin() as connection:
                await connection.execute(sa.delete(next_steps).where(old))
        except UNAVAILABLE as exc:
            logger.warning("could not delete old next steps: %s", describe(exc))

    async def load(self, call_sid: str) -> NextStep | None:
        """The step saved for `call_sid`, or None.

        Raises NextStepsUnavailable if the database does not answer within LOAD_TIMEOUT.
        """
        query = sa.select(next_steps.c.step).where(next_steps.c.call_sid == call_sid[:64])
        try:
            async with asyncio.timeout(LOAD_TIMEOUT), self.engine.connect() as connection:
                text = (await connection.execute(query)).scalar_one_or_none()
        except UNAVAILABLE as exc:
            raise NextStepsUnavailable(call_sid, describe(exc)) from exc
        if text is None:
            return None
        try:
            return NextStep.from_json(text)
        except (ValueError, TypeError) as exc:
            logger.error("next step of %s cannot be read: %s", call_sid, describe(exc))
            return None
