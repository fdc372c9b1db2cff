"""A phone caller as Twilio's media server presents it: a bidirectional Media Stream over WebSocket.

Paces 20 ms µ-law frames in real time, plays what the bridge sends through a buffer drained at
8000 bytes/s, echoes marks, honours `clear`, and records everything for end-to-end assertions.
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

from bridge.sim.playback import FRAME_BYTES, RATE, SILENCE, MarkEcho, PlaybackBuffer
from bridge.sim.signals import from_ulaw, to_ulaw, write_wav
from bridge.sim.twilio_messages import InvalidMessage, StreamMessages, read_bridge_message
from bridge.sim.twiml_client import fetch_twiml, loopback_url, parse_stream

__all__ = ["TwilioCaller", "fetch_twiml", "loopback_url", "parse_stream"]

FRAME_S = FRAME_BYTES / RATE
MAX_BURST = 10
"""Overdue frames sent back to back after a stall (200 ms, as TCP would deliver after a
hiccup); older ones are dropped, like audio lost on a congested path (Twilio 31930)."""


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
        self.clears: list[float] = []
        self.marks_echoed: list[tuple[float, str, bool]] = []
        self.played_per_mark: dict[str, int] = {}
        self.media_after_clear: list[int] = []
        self.protocol_errors: list[str] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: Literal["caller", "bridge"] | None = None
        """Who closed first: the caller (hangup) or the bridge."""
        self.frames_sent = 0
        self.frames_played = 0
        """Ticks that played at least one byte of bridge audio."""
        self.frames_dropped = 0
        """Microphone frames skipped because the loop stalled for more than MAX_BURST ticks."""

        self._playback = PlaybackBuffer()
        self._mic = bytearray()
        self._mic_queued = 0
        self._mic_sent = 0
        self._heard = bytearray()
        self._sent = bytearray()
        self._messages = StreamMessages(self.stream_sid, self.account_sid, self.call_sid)
        self._noise = _comfort_noise(comfort_noise) if comfort_noise > 0 else None
        self._last_audio_end = 0.0
        self._after_clear = False
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        # Held while computing and sending a batch of messages, so that sequence numbers and
        # mark echoes leave in the order they were decided even when a send waits to drain.
        self._send_lock = asyncio.Lock()
        self._stopping = False
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
            await self._ws.send(self._messages.connected())
            await self._ws.send(self._messages.start(self.custom_parameters))
        except BaseException:
            await self._ws.close()
            raise
        self.started_at = self._last_audio_end = asyncio.get_running_loop().time()
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
                    await self._ws.send(self._messages.stop())
            await self._ws.close(1000)
        await self.wait_closed(self.close_timeout + 1.0)

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
        data = to_ulaw(np.asarray(audio_8k, dtype=np.float32))
        self._mic += data
        self._mic_queued += len(data)

    async def say_and_wait(self, audio_8k: npt.NDArray[np.floating[Any]]) -> None:
        """Queue audio and return once all of it is sent; ConnectionError if the call ends first."""
        self.say(audio_8k)
        target = self._mic_queued
        pending = target - self._mic_sent
        await self._wait(lambda: self._mic_sent >= target, pending / RATE + 10.0, quiet_ok=False)

    @property
    def speaking(self) -> bool:
        """True while queued microphone audio has not been sent yet."""
        return bool(self._mic)

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
            idle = loop.time() - self._last_audio_end
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
        return np.asarray(from_ulaw(bytes(self._heard)), dtype=np.float32)

    def sent_audio(self) -> npt.NDArray[np.float32]:
        """What the microphone sent, on the same timeline as `heard()`."""
        return np.asarray(from_ulaw(bytes(self._sent)), dtype=np.float32)

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
        tick = 0
        try:
            while not (self._stopping or self._ended):
                now = loop.time()
                due = self.started_at + tick * FRAME_S
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                    if self._stopping or self._ended:
                        return
                overdue = int((now - self.started_at) / FRAME_S) - tick
                while overdue > MAX_BURST:
                    # Playback keeps real time; the microphone frame is lost, not delayed.
                    await self._tick(tick, now, send=False)
                    tick += 1
                    overdue -= 1
                await self._tick(tick, now, send=True)
                tick += 1
        except ConnectionClosed:
            pass

    async def _tick(self, tick: int, now: float, *, send: bool) -> None:
        async with self._send_lock:
            played, echoes = self._playback.play(now)
            if played:
                self.frames_played += 1
                self._last_audio_end = now + len(played) / RATE
            frame = bytes(self._mic[:FRAME_BYTES])
            del self._mic[:FRAME_BYTES]
            self._mic_sent += len(frame)
            if len(frame) < FRAME_BYTES:
                frame += self._filler(tick)[len(frame) :]
            if self.record:
                self._heard += played
                if len(played) < FRAME_BYTES:
                    self._heard += SILENCE[len(played) :]
                self._sent += frame if send else SILENCE
            echo_messages = [self._echo(echo, now) for echo in echoes]
            assert self._ws is not None
            if send:
                await self._ws.send(self._messages.media(tick + 1, tick * 20, frame))
                self.frames_sent += 1
            else:
                self.frames_dropped += 1
            for message in echo_messages:
                await self._ws.send(message)
        self._notify()

    def _filler(self, tick: int) -> bytes:
        if self._noise is None:
            return SILENCE
        offset = (tick * FRAME_BYTES) % len(self._noise)
        return self._noise[offset : offset + FRAME_BYTES]

    def _echo(self, echo: MarkEcho, now: float) -> str:
        """Record a mark echo and build its message (call under the send lock)."""
        self.marks_echoed.append((now, echo.name, echo.cleared))
        self.played_per_mark[echo.name] = echo.played
        return self._messages.mark(echo.name)

    async def _on_message(self, raw: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        try:
            incoming = read_bridge_message(raw, self.stream_sid)
        except InvalidMessage as exc:
            self.protocol_errors.append(str(exc))
            return
        self.received.append((now, incoming.message))
        if incoming.event == "media":
            self._playback.feed(incoming.audio, now)
            if self._after_clear:
                self.media_after_clear[-1] += len(incoming.audio)
            return
        async with self._send_lock:
            if incoming.event == "mark":
                self._after_clear = False
                echoes = self._playback.mark(incoming.name)
            else:
                self.clears.append(now)
                self.media_after_clear.append(0)
                self._after_clear = True
                echoes = self._playback.clear()
            assert self._ws is not None
            for echo in echoes:
                await self._ws.send(self._echo(echo, now))
        self._notify()


def _comfort_noise(amplitude: float) -> bytes:
    """One second of low white noise in µ-law, cycled by the pacer instead of pure silence."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, amplitude, RATE).clip(-1.0, 1.0).astype(np.float32)
    return to_ulaw(noise)
