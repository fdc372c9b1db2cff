"""uvicorn's sans-I/O WebSocket protocol, without a read pause for every message, and able to
say how many messages wait.

uvicorn pauses reading from the socket after each message it queues for the app and resumes
when the app has taken it: for a Media Stream that is two event-loop registrations (epoll or
io_uring system calls) per 20 ms caller frame, measured at one in eight of the bridge's
system calls under load. Here reading pauses only once `READ_HIGH_WATER` messages wait, which
still bounds what a peer can queue in memory (uvicorn resumes when the app has drained them).

The app can see that backlog through the ASGI scope: `scope["extensions"][BACKLOG_EXTENSION]`
is a callable returning the number of messages queued and not yet received. A call that is
behind uses it to send the caller audio that has piled up in one append instead of one per
frame (see `Call._caller_to_model`), which is how the bridge sheds work when it is overloaded
without delaying anything when it is not.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

__all__ = ["BACKLOG_EXTENSION", "READ_HIGH_WATER", "MediaStreamProtocol"]

BACKLOG_EXTENSION = "bridge.backlog"

READ_HIGH_WATER = 16  # messages queued for the app before the socket stops being read (320 ms)


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """Pause reading at `READ_HIGH_WATER` queued messages instead of at every one."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # unset when the handshake was refused
        if scope is not None:
            # The app task is scheduled, not yet running: it sees the extension.
            scope["extensions"][BACKLOG_EXTENSION] = self.queue.qsize

    def send_receive_event_to_app(self) -> None:
        paused = self.read_paused
        self.read_paused = True  # the parent pauses unless it believes it already has
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and self.queue.qsize() >= READ_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()
