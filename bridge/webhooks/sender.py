"""The delivery loop: claims due outbox rows and POSTs them, signed, until each is taken.

Every worker and replica runs one `WebhookSender`; claims (bridge/webhooks/outbox.py) make each
attempt one sender's. A 2xx answer within `timeout` (10 s) delivers; anything else is retried
after 4 s, 30 s, 2 min, 10 min, 30 min, then hourly (each shortened by up to 20 % of jitter),
until 24 h after the delivery was queued, when it is marked failed. The call log's writer wakes
the sender when it queues a delivery; otherwise it polls (at most every `poll_interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge import metrics
from bridge.settings import Settings
from bridge.store.database import describe
from bridge.webhooks import outbox, payload
from bridge.webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign, warn_unsigned

if TYPE_CHECKING:
    from bridge.store.calllog import CallLog

logger = logging.getLogger(__name__)

TIMEOUT = 10.0  # a receiver that has not answered by then has failed the attempt
# After the 1st, 2nd ... failed attempt. The first retry is sent within 5 s of the failure.
RETRY_DELAYS = (4.0, 30.0, 120.0, 600.0, 1800.0)
HOURLY = 3600.0  # after that
GIVE_UP_AFTER = 24 * 3600.0  # from when the delivery was queued
JITTER = 0.2  # each delay is shortened by up to this share, so retries never bunch up
LEASE = 60.0  # a claim outlives the longest attempt; a sender that died loses it after this
IDLE_POLL = 60.0  # with no webhook URL configured: how soon one added by a reload is noticed
POLL = 5.0  # longest sleep: other replicas' rows, and claims that ran out, are seen this soon
CONCURRENCY = 8  # attempts in flight per sender (each uses a pooled connection briefly)
USER_AGENT = "bridge-webhook/1"
DB_ERRORS = (sa.exc.SQLAlchemyError, OSError, TimeoutError)
# What sending can raise besides a timeout: the network, the receiver, a URL httpx refuses.
SEND_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError)
DB_TIMEOUT = 15.0
OUTAGE_MIN, OUTAGE_MAX = 1.0, 30.0


def retry_delay(
    attempts: int,
    delays: Sequence[float] = RETRY_DELAYS,
    jitter: float = JITTER,
    rng: random.Random | None = None,
) -> float:
    """Seconds from the `attempts`-th failed attempt (1-based) to the next one."""
    base = delays[attempts - 1] if attempts <= len(delays) else HOURLY
    return base * (1.0 - jitter * (rng or random).random())


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt: the receiver's status (None: no answer) and what went wrong ("": nothing)."""

    status: int | None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return not self.error


class WebhookSender:
    """Delivers the outbox of one call-log database; `run` until cancelled."""

    def __init__(
        self,
        engine: AsyncEngine,
        instance: str,
        *,
        secret: bytes | None,
        require_signature: bool = False,
        timeout: float = TIMEOUT,
        delays: Sequence[float] = RETRY_DELAYS,
        jitter: float = JITTER,
        give_up_after: float = GIVE_UP_AFTER,
        lease: float = LEASE,
        poll_interval: float = POLL,
        concurrency: int = CONCURRENCY,
        backlog_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.engine = engine
        self.instance = instance
        self._secret = secret  # never logged, never in an error
        self.require_signature = require_signature
        self.timeout = timeout
        self.delays = tuple(delays)
        self.jitter = jitter
        self.give_up_after = give_up_after
        self.lease = max(lease, timeout + 5.0)
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.backlog_interval = backlog_interval
        self.clock = clock
        self._transport = transport
        self._wake = asyncio.Event()
        # Whether any webhook URL is configured (`bridge serve`: the environment or a profile).
        self.wanted: Callable[[], bool] = _always
        self._outage = False
        self._backlog_at = float("-inf")

    @classmethod
    def for_call_log(cls, call_log: CallLog, settings: Settings, **options: Any) -> WebhookSender:
        """The sender of `bridge serve`: the call log's database and instance name, the secret
        from settings; the call log's writer wakes it whenever it queues a delivery."""
        secret = settings.call_webhook_secret
        sender = cls(
            call_log.engine,
            call_log.instance,
            secret=secret.get_secret_value().encode() if secret is not None else None,
            require_signature=settings.environment == "production",
            **options,
        )
        call_log.writer.on_webhook = sender.wake
        return sender

    def wake(self) -> None:
        """A delivery was queued: look for due rows now."""
        self._wake.set()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,  # a redirect is not a delivery
            transport=self._transport,
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    async def run(self) -> None:
        """Deliver until cancelled; claims still held are given back on the way out."""
        outage_delay = OUTAGE_MIN
        try:
            async with self.client() as client:
                while True:
                    self._wake.clear()
                    if not self.wanted():
                        # No webhook URL anywhere: leave the database (and the loop) alone.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(IDLE_POLL):
                                await self._wake.wait()
                        continue
                    try:
                        async with asyncio.timeout(DB_TIMEOUT + self.timeout):
                            made = await self.deliver_due(client)
                            await self._refresh_backlog(force=made > 0)
                            wait = 0.0 if made >= self.concurrency else await self._until_due()
                    except DB_ERRORS as exc:
                        self._unavailable(exc)
                        wait, outage_delay = outage_delay, min(outage_delay * 2, OUTAGE_MAX)
                    else:
                        outage_delay = OUTAGE_MIN
                        if self._outage:
                            self._outage = False
                            logger.warning("webhook outbox: database is back")
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(wait):
                                await self._wake.wait()
        finally:
            with contextlib.suppress(*DB_ERRORS):
                async with asyncio.timeout(2.0):
                    await outbox.release(self.engine, self.instance)

    async def deliver_due(self, client: httpx.AsyncClient | None = None) -> int:
        """One pass: claim what is due (up to `concurrency`), attempt it all, return how many
        attempts were made. Database errors while claiming propagate."""
        now = self.clock()
        claimed = await outbox.claim_due(
            self.engine, self.instance, now, self.lease, self.concurrency
        )
        if not claimed:
            return 0
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(self.client())
            async with asyncio.TaskGroup() as group:
                for delivery in claimed:
                    group.create_task(self._attempt(client, delivery))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, delivery: outbox.Delivery) -> None:
        """One attempt and its record; the log-and-contain boundary of one delivery."""
        try:
            body = delivery.body
            if body is None:
                try:
                    built = await payload.build_body(self.engine, delivery.call_sid)
                except ValueError as exc:  # a row JSON cannot carry (NaN): retried, then failed
                    await self._failed(delivery, Outcome(None, f"body: {describe(exc)}"))
                    return
                if built is None:
                    await self._failed(delivery, Outcome(None, "the call is not in the call log"))
                    return
                body = await outbox.store_body(self.engine, delivery.id, built.decode())
            outcome = await self.post(client, delivery, body.encode())
            if outcome.delivered:
                assert outcome.status is not None
                await outbox.mark_delivered(self.engine, delivery.id, self.clock(), outcome.status)
                metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                logger.info(
                    "webhook %s of call %s delivered to %s: HTTP %d (attempt %d)",
                    delivery.delivery_id,
                    delivery.call_sid,
                    _host(delivery.url),
                    outcome.status,
                    delivery.attempts + 1,
                )
            else:
                await self._failed(delivery, outcome)
        except Exception as exc:  # the row keeps its claim until the lease ends, then is retried
            level = logging.WARNING if isinstance(exc, DB_ERRORS) else logging.ERROR
            logger.log(
                level,
                "webhook %s of call %s: attempt not recorded (%s); retried when its claim ends",
                delivery.delivery_id,
                delivery.call_sid,
                describe(exc),
                exc_info=level == logging.ERROR,
            )

    async def _failed(self, delivery: outbox.Delivery, outcome: Outcome) -> None:
        now = self.clock()
        retry_at = self.retry_at(delivery, now)
        await outbox.mark_attempt_failed(
            self.engine,
            delivery.id,
            self.instance,
            now,
            status=outcome.status,
            error=outcome.error,
            retry_at=retry_at,
        )
        where = _host(delivery.url)
        if retry_at is None:
            metrics.WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
            logger.error(
                "webhook %s of call %s to %s failed for good after %d attempts: %s",
                delivery.delivery_id,
                delivery.call_sid,
                where,
                delivery.attempts + 1,
                outcome.error,
            )
        else:
            metrics.WEBHOOK_DELIVERIES.labels(outcome="retried").inc()
            logger.warning(
                "webhook %s of call %s to %s: %s; retry in %.0f s",
                delivery.delivery_id,
                delivery.call_sid,
                where,
                outcome.error,
                retry_at - now,
            )

    def retry_at(self, delivery: outbox.Delivery, now: float) -> float | None:
        """When to try again after a failed attempt; None: give up (24 h since queued)."""
        deadline = delivery.created_at + self.give_up_after
        if now >= deadline:
            return None
        delay = retry_delay(delivery.attempts + 1, self.delays, self.jitter)
        return min(now + delay, deadline)  # the last try is made at the deadline

    async def post(
        self, client: httpx.AsyncClient, delivery: outbox.Delivery, body: bytes
    ) -> Outcome:
        """POST the body once; never raises for what the receiver (or the network) does."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            DELIVERY_HEADER: delivery.delivery_id,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        elif self.require_signature:
            return Outcome(None, "not sent: BRIDGE_CALL_WEBHOOK_SECRET is not set")
        else:
            warn_unsigned()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):  # the whole exchange, not each phase
                async with client.stream(
                    "POST", delivery.url, content=body, headers=headers
                ) as response:
                    status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, f"no answer within {self.timeout:g} s")
        except SEND_ERRORS as exc:
            return Outcome(None, describe(exc))
        finally:
            metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        if 200 <= status < 300:
            return Outcome(status)
        return Outcome(status, f"HTTP {status}")

    async def _until_due(self) -> float:
        """Seconds to sleep: until the earliest pending row can be claimed, at most a poll."""
        due = await outbox.next_due(self.engine)
        if due is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.05, due - self.clock()))

    async def _refresh_backlog(self, *, force: bool = False) -> None:
        moment = time.monotonic()
        if force or moment - self._backlog_at >= self.backlog_interval:
            metrics.WEBHOOK_BACKLOG.set(await outbox.backlog(self.engine))
            self._backlog_at = moment

    def _unavailable(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            logger.warning("webhook outbox: database unavailable (%s); retrying", describe(exc))


def _always() -> bool:
    return True


def _host(url: str) -> str:
    """Where a webhook goes, for logs: the host only (a URL may carry a token)."""
    return urlsplit(url).hostname or "?"
