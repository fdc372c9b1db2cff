"""One call's recording: the tape its session fills, written out every second while the call
runs, then handed to the store (a bucket upload) when it ends.

The writes happen on the event loop, each call at its own moment in the second: appending a
second of a call to its file is a few system calls into the page cache, about 20 µs. A writer
thread costs the loop more than that: every time it takes the GIL back after a system call the
loop may wait up to the switch interval (5 ms), which put p99 added latency from 3 to 12 ms at
100 recorded calls, where writing on the loop leaves it unchanged (docs/capacity.md).

Storage trouble never touches the call: a file that cannot be opened means no recording, a
write that fails stops the recording where it is (what was written stays playable), and an
upload that fails leaves the file in the spool for the next recovery. Each is logged and
counted (`bridge_recordings_total{outcome="failed"}`).
"""

from __future__ import annotations

import asyncio
import logging

from bridge import metrics
from bridge.record import CallRecord
from bridge.recording.store import RecordingStore, recording_key
from bridge.recording.tape import Tape
from bridge.recording.wavfile import WavFile

logger = logging.getLogger(__name__)

WRITE_EVERY = 1.0  # seconds: what a crash may lose
SAVE_TIMEOUT = 60.0  # an upload taking longer is left to the spool's recovery


class CallRecording:
    """The recording of one call, from its stream's start."""

    def __init__(self, store: RecordingStore, key: str, file: WavFile) -> None:
        self.store = store
        self.key = key
        self.tape = Tape()
        self._file = file
        self._failed = False

    @classmethod
    def start(cls, store: RecordingStore, record: CallRecord) -> CallRecording | None:
        """Open the call's file and put its key on the record; None if it cannot be opened."""
        key = recording_key(record.call_sid, record.started_at)
        try:
            file = WavFile(store.spool(key))
        except Exception as exc:
            logger.error("cannot record call %s: %r", record.call_sid, exc)
            metrics.RECORDINGS.labels(outcome="failed").inc()
            return None
        record.recording = key
        return cls(store, key, file)

    async def run(self) -> None:
        """Write what the tape has settled, every second, until cancelled with the call."""
        while not self._failed:
            await asyncio.sleep(WRITE_EVERY)
            self._write()

    def _write(self, *, final: bool = False) -> None:
        if self._failed:
            return
        try:
            self._file.write(self.tape.take(final=final))
        except Exception as exc:
            self._failed = True
            logger.error("recording %s stopped: %r", self.key, exc)

    async def finish(self, record: CallRecord) -> None:
        """The call is over: the last of the tape, the file closed and saved; its size goes on
        the record."""
        self._write(final=True)
        try:
            record.recording_bytes = self._file.close()
            async with asyncio.timeout(SAVE_TIMEOUT):
                await self.store.save(self.key)
        except Exception as exc:
            logger.error("could not save recording %s: %r", self.key, exc)
            metrics.RECORDINGS.labels(outcome="failed").inc()
            return
        metrics.RECORDINGS.labels(outcome="failed" if self._failed else "saved").inc()
