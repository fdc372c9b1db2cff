"""A phone caller as Twilio's media server presents it: a bidirectional Media Stream over WebSocket.

The asyncio binding of `bridge.sim.caller_core` (which owns the call's rules): paces 20 ms µ-law
frames in real time, plays what the bridge sends, echoes marks, honours `clear`, and records
everything for end-to-end assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.sim.caller_core import FRAME_S, MAX_BURST, CallerCore, Microphone, frames_to_drop
from bridge.sim.playback import RATE
from bridge.sim.signals import from_ulaw, to_ulaw, write_wav
from bridge.sim.twilio_messages import InvalidMessage, read_bridge_message
from bridge.sim.twiml_client import (
    fetch_action,
    fetch_twiml,
    loopback_url,
    parse_connect_action,
    parse_next_step,
    parse_stream,
)

__all__ = [
    "MAX_BURST",
    "TwilioCaller",
    "fetch_action",
    "fetch_twiml",
    "loopback_url",
    "parse_connect_action",
    "parse_next_step",
    "parse_stream",
]


def _new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


class TwilioCaller:
    """One simulated call on the bridge's `/twilio/media` WebSocket; an async context manager.

    `__aenter__` connects, sends `connected` and `start`, and starts the 20 ms pacer (which also
    drains playback); `__aexit__` hangs up if still connected and awaits its tasks.
    Two tasks per caller: the receiver (which owns the pacer in a task group) and the pacer.
    """

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str = "AC" + "0" * 32,
        record: bool = True,
        comfort_noise: float = 0.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.custom_parameters = dict(custom_parameters or {})
        self.headers = dict(headers or {})
        self.call_sid = call_sid or _new_sid("CA")
        self.stream_sid = stream_sid or _new_sid("MZ")
        self.account_sid = account_sid
        self.record = record
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.started_at = 0.0

        self.received: list[tuple[float, dict[str, Any]]] = []
        self.protocol_errors: list[str] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: Literal["caller", "bridge"] | None = None
        """Who closed first: the caller (hangup) or the bridge."""

        self._mic = Microphone(_comfort_noise(comfort_noise) if comfort_noise > 0 else None)
        self.core = CallerCore(
            self.stream_sid,
            self.call_sid,
            self._mic.frame,
            account_sid=account_sid,
            observe=True,
            record=record,
        )
        self._playback = self.core.playback
        self.clears = self.core.clears
        self.marks_echoed = self.core.marks_echoed
        self.played_per_mark = self.core.played_per_mark
        self.media_after_clear = self.core.media_after_clear
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        # Held while sending a batch of messages the core decided. The core numbers them
        # synchronously and the lock is FIFO, so they leave in the order they were decided even
        # when a send waits to drain.
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self.silenced = False  # `go_silent()`: the caller's side sends nothing more
        self._ended = False  # the socket is closed (by either side)
        self._done = asyncio.Event()  # receiver and pacer have finished
        self._waiters: list[asyncio.Future[None]] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> TwilioCaller:
        self._ws = await connect(
            self.url,
            additional_headers=self.headers,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            compression=None,
            max_size=2**22,
        )
        try:
            for message in self.core.opening(self.custom_parameters):
                await self._ws.send(message)
        except BaseException:
            await self._ws.close()
            raise
        self.started_at = self.core.last_audio_end = asyncio.get_running_loop().time()
        self._runner = asyncio.create_task(self._run(), name=f"twilio-caller-{self.call_sid}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._ws is not None and not self._ended:
                await self.hangup()
        finally:
            failure = await self._shutdown()
        if failure is not None and exc is None:
            raise failure

    async def hangup(self) -> None:
        """Send `stop` and close the socket with 1000; idempotent; returns once closed."""
        if self._ws is None:
            raise RuntimeError("not connected")
        if not self._stopping and not self._ended:
            self._stopping = True
            async with self._send_lock:
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(self.core.stop())
            await self._ws.close(1000)
        await self.wait_closed(self.close_timeout + 1.0)

    async def press(self, keys: str, gap: float = 0.1) -> None:
        """Press keypad `keys` one after another, `gap` seconds apart (Twilio's `dtmf`)."""
        if self._ws is None:
            raise RuntimeError("not connected")
        for n, key in enumerate(keys):
            if n:
                await asyncio.sleep(gap)
            await self._send_all([self.core.messages.dtmf(key)])

    def go_silent(self) -> None:
        """Stop sending anything (media, marks) without closing: a caller whose network died
        without a close, as the bridge sees it."""
        self.silenced = True

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the socket is closed (by either side) and the caller's tasks are done."""
        async with asyncio.timeout(timeout):
            await self._done.wait()

    async def _shutdown(self) -> BaseException | None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        if self._ws is not None:
            await self._ws.close()  # no-op when already closed; bounded by close_timeout
            if self.close_code is None:
                self.close_code = self._ws.close_code
                self.close_reason = self._ws.close_reason
        if runner is not None and not runner.cancelled():
            return runner.exception()
        return None

    # -- microphone ----------------------------------------------------------------------

    def say(self, audio_8k: npt.NDArray[np.floating[Any]]) -> None:
        """Queue float32 8 kHz audio for the microphone; it goes out in the next frames."""
        self._mic.say(to_ulaw(np.asarray(audio_8k, dtype=np.float32)))

    async def say_and_wait(self, audio_8k: npt.NDArray[np.floating[Any]]) -> None:
        """Queue audio and return once all of it is sent; ConnectionError if the call ends first."""
        self.say(audio_8k)
        mic = self._mic
        target = mic.queued
        pending = target - mic.sent
        await self._wait(lambda: mic.sent >= target, pending / RATE + 10.0, quiet_ok=False)

    @property
    def speaking(self) -> bool:
        """True while queued microphone audio has not been sent yet."""
        return self._mic.speaking

    @property
    def frames_sent(self) -> int:
        """Microphone frames sent."""
        return self.core.frames_sent

    @property
    def frames_played(self) -> int:
        """Ticks that played at least one byte of bridge audio."""
        return self.core.frames_played

    @property
    def frames_dropped(self) -> int:
        """Microphone frames skipped because the loop stalled for more than MAX_BURST ticks."""
        return self.core.frames_dropped

    # -- playback observations -----------------------------------------------------------

    async def wait_for_playback(self, seconds: float, timeout: float = 10.0) -> None:
        """Wait until `seconds` of bridge audio have been played from now on."""
        target = self._playback.played_total + round(seconds * RATE)
        await self._wait(lambda: self._playback.played_total >= target, timeout, quiet_ok=False)

    async def wait_until_quiet(self, seconds: float = 0.5, timeout: float = 10.0) -> None:
        """Wait until the playback buffer is empty and nothing has played for `seconds`.

        Returns at once if the call has ended: nothing more will play.
        """
        loop = asyncio.get_running_loop()

        def quiet() -> bool:
            idle = loop.time() - self.core.last_audio_end
            return self._playback.buffered == 0 and idle >= seconds

        await self._wait(quiet, timeout, quiet_ok=True)

    @property
    def underruns(self) -> int:
        """Gaps heard inside a reply: audio stopped for >= 1 tick and resumed within 1 s."""
        return self._playback.underruns

    @property
    def gaps_ms(self) -> list[float]:
        """Duration of each underrun gap, in ms."""
        return self._playback.gaps_ms

    @property
    def buffered(self) -> int:
        """Bytes of bridge audio waiting in the playback buffer."""
        return self._playback.buffered

    def heard(self) -> npt.NDArray[np.float32]:
        """Everything the caller heard (silence when idle), float32 8 kHz from `started_at`."""
        return np.asarray(from_ulaw(bytes(self.core.heard)), dtype=np.float32)

    def sent_audio(self) -> npt.NDArray[np.float32]:
        """What the microphone sent, on the same timeline as `heard()`."""
        return np.asarray(from_ulaw(bytes(self.core.sent)), dtype=np.float32)

    def write_heard_wav(self, path: str | os.PathLike[str]) -> None:
        """Write `heard()` as an 8 kHz WAV file."""
        write_wav(path, self.heard(), RATE)

    def received_after(self, t: float) -> list[dict[str, Any]]:
        """Messages from the bridge that arrived at or after loop time `t`."""
        return [message for at, message in self.received if at >= t]

    # -- internals -----------------------------------------------------------------------

    async def _wait(self, predicate: Callable[[], bool], timeout: float, *, quiet_ok: bool) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._ended:
                    if quiet_ok:
                        return
                    raise ConnectionError(f"call {self.call_sid} ended (close {self.close_code})")
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self) -> None:
        assert self._ws is not None
        try:
            async with asyncio.TaskGroup() as tg:
                pacer = tg.create_task(self._pace(), name=f"twilio-pacer-{self.call_sid}")
                try:
                    await self._receive(self._ws)
                finally:
                    pacer.cancel()
        finally:
            self._done.set()
            self._notify()

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            self._ended = True
            self.closed_by = "caller" if self._stopping else "bridge"
            self._notify()
        # The receive loop ends once the transport is lost, so this is normally immediate.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                await ws.wait_closed()
        self.close_code = ws.close_code
        self.close_reason = ws.close_reason

    async def _pace(self) -> None:
        """Tick every 20 ms on an absolute schedule from `started_at`: no drift accumulates."""
        loop = asyncio.get_running_loop()
        core = self.core
        try:
            while not (self._stopping or self._ended):
                now = loop.time()
                due = self.started_at + core.ticks * FRAME_S
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                    if self._stopping or self._ended:
                        return
                for _ in range(frames_to_drop(self.started_at, now, core.ticks)):
                    # Playback keeps real time; the microphone frame is lost, not delayed.
                    await self._send_all(core.tick(now, send=False))
                messages = core.tick(now)
                if self.silenced:
                    continue  # a dead network: nothing leaves, and the socket stays open
                await self._send_all(messages)
        except ConnectionClosed:
            pass

    async def _send_all(self, messages: list[str]) -> None:
        """Send what the core decided, in its order (a tick's messages go out together)."""
        assert self._ws is not None
        async with self._send_lock:
            for message in messages:
                await self._ws.send(message)
        self._notify()

    async def _on_message(self, raw: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        try:
            incoming = read_bridge_message(raw, self.stream_sid)
        except InvalidMessage as exc:
            self.protocol_errors.append(str(exc))
            return
        self.received.append((now, incoming.message))
        if incoming.event == "media":
            self.core.media(incoming.audio, now)
        elif incoming.event == "mark":
            await self._send_all(self.core.mark(incoming.name, now))
        else:
            await self._send_all(self.core.clear(now))


def _comfort_noise(amplitude: float) -> bytes:
    """One second of low white noise in µ-law, cycled by the pacer instead of pure silence."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, amplitude, RATE).clip(-1.0, 1.0).astype(np.float32)
    return to_ulaw(noise)
