"""A one-line progress bar on stderr (redrawn in place on a terminal, sparse lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

WIDTH = 24


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last_plain = 0.0
        self._drawn = False

    def update(self, label: str, done: float, total: float, detail: str) -> None:
        if not self.enabled:
            return
        share = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
        filled = round(share * WIDTH)
        bar = "#" * filled + "." * (WIDTH - filled)
        line = f"[{bar}] {label:<16} {done:5.1f}/{total:.0f}s  {detail}"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (ends the bar's line first)."""
        if not self.enabled:
            return
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
