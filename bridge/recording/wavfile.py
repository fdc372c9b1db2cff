"""A WAV file that is complete on disk at every moment: written as the call runs.

The header comes from the standard library's `wave` writer; each write appends the samples and
then patches the header's two sizes in place (RIFF chunk at byte 4, data chunk at byte 40), each
a plain system call, so the file is a playable WAV of everything written so far whenever the
process dies (the operating system has every byte once `write` returns). Plain `os` calls, not
`wave`'s own appending (a dozen Python-level file operations a write): this runs on the event
loop, once a second per recorded call, and must cost it next to nothing.
"""

from __future__ import annotations

import io
import os
import struct
import wave
from pathlib import Path

CHANNELS = 2
SAMPLE_WIDTH = 2  # 16-bit
RATE = 8000
RIFF_SIZE_AT, DATA_SIZE_AT = 4, 40  # offsets of the two sizes in the canonical 44-byte header


def _header() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(RATE)
        wav.writeframes(b"")
    header = buffer.getvalue()
    if len(header) != DATA_SIZE_AT + 4 or header[36:40] != b"data":
        raise RuntimeError("unexpected WAV header layout")
    return header


HEADER = _header()


class WavFile:
    """Two-channel, 16-bit, 8 kHz PCM, appended to as the call goes on."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        self._data = 0  # bytes of samples written
        self.closed = False
        self._write_all(HEADER)

    def write(self, frames: bytes) -> None:
        """Interleaved samples; on disk (in the OS's hands) with a header that counts them when
        this returns."""
        if not frames:
            return
        self._write_all(frames)
        self._data += len(frames)
        os.pwrite(self._fd, struct.pack("<I", 36 + self._data), RIFF_SIZE_AT)
        os.pwrite(self._fd, struct.pack("<I", self._data), DATA_SIZE_AT)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> int:
        """Finish the file; its size in bytes."""
        if not self.closed:
            self.closed = True
            os.close(self._fd)
        return len(HEADER) + self._data
