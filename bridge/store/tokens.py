"""The shared ledger of used Media Stream tokens (`bridge.signatures.TokenLedger`).

One row per token in the call log's database, inserted atomically: of two workers or replicas
claiming the same token, exactly one insert takes, so a token opens one stream only. Rows are
deleted a while after their token expired, by whichever process claims next.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.signatures import TOKEN_TTL, LedgerUnavailable, StreamToken
from bridge.store.database import describe
from bridge.store.schema import stream_tokens

CLAIM_TIMEOUT = 1.0  # a call waits this long at most before its Realtime session opens
PRUNE_EVERY = 60.0  # seconds between deletions of expired rows, per process
KEEP_AFTER_EXPIRY = TOKEN_TTL  # margin for clocks that differ between replicas


class StreamTokenLedger:
    """`claim` a token for this process; False if any process claimed it before."""

    def __init__(self, engine: AsyncEngine, instance: str = "") -> None:
        self.engine = engine
        self.instance = instance
        insert: Any = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._claim = insert(stream_tokens).on_conflict_do_nothing(
            index_elements=[stream_tokens.c.token_key]
        )
        self._pruned_at = float("-inf")

    async def claim(self, token: StreamToken, *, now: float) -> bool:
        """Record `token` as used: True if this is its first use anywhere.

        Raises LedgerUnavailable if the database does not answer within CLAIM_TIMEOUT.
        """
        row = {
            "token_key": token.key,
            "expires_at": token.expires,
            "call_sid": token.call_sid[:64],
            "instance": self.instance[:64],
        }
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT), self.engine.begin() as connection:
                result = await connection.execute(self._claim, row)
                if now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    expired = stream_tokens.c.expires_at < now - KEEP_AFTER_EXPIRY
                    await connection.execute(sa.delete(stream_tokens).where(expired))
        except (TimeoutError, OSError, sa.exc.SQLAlchemyError) as exc:
            raise LedgerUnavailable(describe(exc)) from exc
        return bool(result.rowcount == 1)
