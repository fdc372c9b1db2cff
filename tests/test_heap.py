"""The serving process's memory between calls (bridge/heap.py): start-up frozen out of the
collector's walks, and the C heap's free pages handed back, checked on the process's own RSS."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import platform

import pytest

from bridge import heap
from bridge.bench import proc

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def rss_mb() -> float:
    sample = proc.sample_process(os.getpid())
    assert sample is not None
    return sample.rss / (1024 * 1024)


def test_start_up_objects_are_frozen_out_of_the_collectors_walks() -> None:
    try:
        frozen = heap.freeze_startup()
        assert frozen == gc.get_freeze_count() > 10_000  # the modules and classes loaded so far
        assert len(gc.get_objects()) < frozen  # what a full collection still walks
    finally:
        gc.unfreeze()


@glibc
def test_a_trim_hands_back_the_pages_a_burst_left_in_the_heap() -> None:
    # A burst of 4 KB buffers (malloc, not Python's small-object allocator), then all freed but
    # every tenth: the holes stay in the heap, resident, until trimmed.
    heap.trim()
    burst = [bytes(4000) for _ in range(25_000)]  # 100 MB
    for index in range(len(burst)):
        if index % 10:
            burst[index] = b""
    before = rss_mb()
    assert heap.trim() is True
    after = rss_mb()
    assert before - after > 50, (before, after)  # of the 90 MB freed
    del burst


async def test_the_heap_is_trimmed_on_a_timer_until_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(asyncio.get_running_loop().time()))
    task = asyncio.create_task(heap.trim_every(0.05))
    await asyncio.sleep(0.28)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 4 <= len(trims) <= 6
    assert all(0.04 < b - a < 0.2 for a, b in itertools.pairwise(trims))
