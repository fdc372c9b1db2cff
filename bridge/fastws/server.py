"""uvicorn's sans-I/O WebSocket protocol, without a read pause for every message, and able to
say how many messages wait.

uvicorn pauses reading from the socket after each message it queues for the app and resumes
when the app has taken it: for a Media Stream that is two event-loop registrations (epoll or
io_uring system calls) per 20 ms caller frame, measured at one in eight of the bridge's
system calls under load. Here reading pauses only once `READ_HIGH_WATER` messages wait, which
still bounds what a peer can queue in memory (uvicorn resumes when the app has drained them).

Caller frames are small, final, masked text frames, one after another. When a read holds only
such frames, and the library's parser sits between messages with nothing buffered, they are
decoded here and queued straight away; anything else (a control frame, a fragment, a partial
frame, a frame too large, text that is not UTF-8) goes to the library, which handles it as it
always does. Measured with `bridge bench --instructions`: 9 % of the bridge's instructions per
call, spent on a generator-based parser for a frame shape that never varies. The check reads
the sans-I/O protocol's parser state (`current_size`, `expect_continuation_frame`, its reader's
buffer); pyproject pins websockets and uvicorn to the versions the tests run against.

Sending works the same way round: `scope["extensions"][SEND_EXTENSION]` is a callable that
writes whole text frames straight to the socket in one `transport.write` when nothing stands in
the way (open, not closing, the transport not asking us to wait) and returns False otherwise,
so the app then uses the ASGI send with its flow control. A reply's media and its mark go out
as one write: measured -3 % of the bridge's instructions, and one system call per delta instead
of two.

The commonest message can skip the queue altogether. `scope["extensions"][HANDLER_EXTENSION]`
sets (or, with None, clears) a synchronous handler that sees a decoded text message first when
it arrived alone in its read and no message waits in the queue, so order is kept; it returns
True when it has dealt with the message, else the message is queued for the app as usual.
Several messages in one read (a burst, or a server that has fallen behind) always go to the
app, which can batch them. The bridge handles a caller's media frame there (convert, append
upstream) without waking the call's task, which saves a queue hand-over, a task switch and two
layers of ASGI receive per frame (measured: -6 % of the bridge's instructions per call-second).

The app can see the backlog through the ASGI scope: `scope["extensions"][BACKLOG_EXTENSION]`
is a callable returning the number of messages queued and not yet received. A call that is
behind uses it to send the caller audio that has piled up in one append instead of one per
frame (see `CallerSocket.gather_backlog` in bridge/call/sockets.py), which is how the bridge
sheds work when it is overloaded without delaying anything when it is not.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from bridge.fastws import BACKLOG_EXTENSION, HANDLER_EXTENSION, SEND_EXTENSION, TextHandler
from bridge.fastws.frames import OP_TEXT, final_frame_header, simple_text_frames

__all__ = [
    "BACKLOG_EXTENSION",
    "HANDLER_EXTENSION",
    "READ_HIGH_WATER",
    "SEND_EXTENSION",
    "MediaStreamProtocol",
    "TextHandler",
]


READ_HIGH_WATER = 16  # messages queued for the app before the socket stops being read (320 ms)


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """Pause reading at `READ_HIGH_WATER` queued messages instead of at every one; decode the
    common case of plain text frames without the library's parser."""

    text_handler: TextHandler | None = None

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if (
            conn.state is State.OPEN
            and conn.current_size is None  # not inside a fragmented message
            and not conn.expect_continuation_frame
            and not conn.reader.buffer  # the parser waits at a frame boundary
            and not self.frames
            and not self.close_sent
        ):
            texts = simple_text_frames(data, conn.max_message_size)
            if texts is not None:
                queue, handler = self.queue, self.text_handler
                # One message per read is a peer in real time. More is a burst, or a bridge
                # that has fallen behind: those go to the app, which can batch them.
                if len(texts) == 1 and handler is not None and queue.empty() and handler(texts[0]):
                    return
                for text in texts:
                    queue.put_nowait({"type": "websocket.receive", "text": text})
                self._pause_if_backlogged()
                return
        super().data_received(data)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # unset when the handshake was refused
        if scope is not None:
            # The app task is scheduled, not yet running: it sees the extension.
            scope["extensions"][BACKLOG_EXTENSION] = self.queue.qsize
            scope["extensions"][SEND_EXTENSION] = self.send_text_now
            scope["extensions"][HANDLER_EXTENSION] = self.set_text_handler

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The lent callables are this protocol's bound methods, kept in its own scope: a cycle
        # that would hold the protocol and its buffers until a full collection.
        scope = getattr(self, "scope", None)
        if scope is not None:
            for name in (BACKLOG_EXTENSION, SEND_EXTENSION, HANDLER_EXTENSION):
                scope["extensions"].pop(name, None)
        self.text_handler = None

    def set_text_handler(self, handler: TextHandler | None) -> None:
        """Let `handler` take text messages before they are queued (None: stop)."""
        self.text_handler = handler

    def send_text_now(self, texts: tuple[str, ...]) -> bool:
        """Write `texts` as final text frames in one write; False if the ASGI send must do it."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()  # the transport asked us to stop writing
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        frames = []
        for text in texts:
            payload = text.encode()
            frames.append(final_frame_header(OP_TEXT, len(payload), masked=False))
            frames.append(payload)
        self.transport.write(b"".join(frames))
        return True

    def send_receive_event_to_app(self) -> None:
        paused = self.read_paused
        self.read_paused = True  # the parent pauses unless it believes it already has
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        self._pause_if_backlogged()

    def _pause_if_backlogged(self) -> None:
        if not self.read_paused and self.queue.qsize() >= READ_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()
