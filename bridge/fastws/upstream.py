"""The caller-audio hot path onto the Realtime socket: whole text frames, written directly.

Every caller frame becomes one `input_audio_buffer.append` (50 a second per call). websockets'
`send()` spends about 10 µs per message on generic machinery: an async context manager, the
protocol's frame objects, and a `getrandom` system call for each 4-byte mask. Measured in the
benchmark that is a tenth of the bridge's CPU. A text message that fits in one frame needs
none of it: a 2-10 byte header, a mask and the masked payload, written with one
`transport.write`. One write per frame means our frames never interleave with the library's
own pings, pongs and close frames, and the library still owns the connection: anything out of
the ordinary (not open, writes backing up) goes through `send()` with its flow control.
"""

from __future__ import annotations

import os

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from bridge.fastws.frames import text_frame

__all__ = ["DIRECT_WRITE_LIMIT", "MaskSource", "UpstreamWriter"]

# Below websockets' write high-water mark (32 KiB by default) send() would not wait either.
DIRECT_WRITE_LIMIT = 16 * 1024


class MaskSource:
    """Client frame masks from the OS's CSPRNG (RFC 6455 5.3), drawn 4 KiB at a time.

    Same source as websockets uses, one system call per 1024 frames instead of per frame.
    """

    __slots__ = ("_block", "_pos")

    BLOCK = 4096

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def take(self) -> bytes:
        pos = self._pos
        if pos >= len(self._block):
            self._block = os.urandom(self.BLOCK)
            pos = 0
        self._pos = pos + 4
        return self._block[pos : pos + 4]


class UpstreamWriter:
    """Writes text messages on a websockets client connection, bypassing `send()` when safe."""

    __slots__ = ("_connection", "_masks")

    def __init__(self, connection: ClientConnection, masks: MaskSource | None = None) -> None:
        self._connection = connection
        self._masks = masks if masks is not None else MaskSource()

    def writable(self) -> bool:
        """Whether a frame can be written now, without waiting (true until the loop next runs)."""
        connection = self._connection
        transport = connection.transport
        return (
            connection.protocol.state is State.OPEN
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        )

    def write(self, text: str) -> None:
        """Write `text` as one frame; only right after `writable()` said True."""
        self._connection.transport.write(text_frame(text.encode(), self._masks.take()))

    def write_now(self, texts: tuple[str, ...]) -> bool:
        """Write `texts`, a frame each, now; False (nothing written) if the caller must
        `await connection.send` instead."""
        if not self.writable():
            return False
        for text in texts:
            self.write(text)
        return True

    def try_send(self, text: str) -> bool:
        """Write `text` as one frame now; False if the caller must `await connection.send`."""
        return self.write_now((text,))
