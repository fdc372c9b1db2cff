"""`TaskGroup`: asyncio's, minus the reference cycles it leaves behind on some Pythons.

A call's tasks run in task groups, and a call ends by an exception through them. CPython 3.11
to 3.13.0 leave that exception referenced from the locals of `TaskGroup.__aexit__`'s own
frame, and a group keeps its parent task after it exits. Each is a cycle through the call's
frames, which then keeps the call's sockets, session and audio state until the next full
collection: minutes on a busy process, tens of MB at 200 calls. CPython fixed both later
(gh-124958, gh-128552); this does the same from outside, so an ended call is freed when it
ends, on every Python.
"""

from __future__ import annotations

import asyncio
import traceback
from types import TracebackType


class TaskGroup(asyncio.TaskGroup):
    """`asyncio.TaskGroup` whose exit leaves no cycle through the exception it raises."""

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(et, exc, tb)
        except BaseException as error:
            # The frames it passed through have finished; their locals are what hold it.
            traceback.clear_frames(error.__traceback__)
            raise
        finally:
            et = exc = tb = None  # this frame's own references to it
            # The group's parent task may end cancelled, holding the CancelledError whose
            # traceback holds the frame that holds this group: a cycle, unless we let go.
            self._parent_task = None
