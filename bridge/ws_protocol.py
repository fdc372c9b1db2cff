"""uvicorn's sans-I/O WebSocket protocol, without a read pause for every message.

uvicorn pauses reading from the socket after each message it queues for the app and resumes
when the app has taken it: for a Media Stream that is two event-loop registrations (epoll or
io_uring system calls) per 20 ms caller frame, measured at about a fifth of the bridge's
system calls under load. Here reading pauses only once `READ_HIGH_WATER` messages wait, which
still bounds what a peer can queue in memory (uvicorn resumes when the app has drained them).
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["READ_HIGH_WATER", "MediaStreamProtocol"]

READ_HIGH_WATER = 16  # messages queued for the app before the socket stops being read (320 ms)


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """Pause reading at `READ_HIGH_WATER` queued messages instead of at every one."""

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
