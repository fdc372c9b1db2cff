"""The serving process's memory between calls: start-up's objects kept out of the collector's
way, and the C heap's free pages handed back.

Both were measured in the soak (docs/capacity.md, "Soak"), 200 calls on one event loop:

- A full collection walks every object the collector tracks with the loop stopped, so every
  caller's audio waits for it: 750k objects, 135 ms. Start-up's objects (modules, classes, the
  app, about 140k) live as long as the process; `freeze_startup` moves them out of the
  collector's sight once the server is up (`gc.freeze`, as the Python documentation advises for
  long-running servers). Measured: full collections 66 to 86 ms instead.
- glibc's malloc keeps what is freed in its heap for reuse. A burst (a late loop with audio
  queued behind it, many calls ending at once) raises the heap, and RSS keeps that high-water
  mark long after the burst is over. `trim_every` asks malloc to hand free pages back to the
  system once a minute (`malloc_trim`, about 1 ms, at most 2.4 ms measured). Where the C library
  has no `malloc_trim` (musl, macOS) there is nothing to do, and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Callable

__all__ = ["TRIM_EVERY", "freeze_startup", "trim", "trim_every"]

logger = logging.getLogger(__name__)

TRIM_EVERY = 60.0  # seconds between trims of the C heap


def freeze_startup() -> int:
    """Collect once, then freeze what is left (start-up's objects); how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("%d start-up objects frozen out of the garbage collector's walks", frozen)
    return frozen


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    except OSError:
        return None
    found = getattr(libc, "malloc_trim", None)
    if found is None:
        return None
    found.argtypes = [ctypes.c_size_t]
    found.restype = ctypes.c_int
    malloc_trim: Callable[[int], int] = found
    return malloc_trim


_malloc_trim = _find_malloc_trim()


def trim() -> bool | None:
    """Hand the C heap's free pages back to the system: whether any were (None: the C library
    cannot)."""
    if _malloc_trim is None:
        return None
    return bool(_malloc_trim(0))


async def trim_every(seconds: float = TRIM_EVERY) -> None:
    """Trim the C heap every `seconds`, until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        trim()
