"""RFC 6455 frame pieces shared by the bridge's own fast paths and the benchmark's generator:
the header of a final frame, and masking. Everything else about WebSockets is the library's."""

from __future__ import annotations

import struct
from collections.abc import Callable

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - the wheels ship the C extension
    _c_apply_mask = None

__all__ = ["OP_TEXT", "apply_mask", "final_frame_header"]

OP_TEXT = 0x1


def _py_apply_mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


# XOR `data` with the 4-byte `key` repeated: websockets' C speedup itself when it is there (it is
# called once per frame on the hot paths), else the same in Python.
apply_mask: Callable[[bytes, bytes], bytes] = _c_apply_mask or _py_apply_mask


def final_frame_header(opcode: int, length: int, *, masked: bool) -> bytes:
    """FIN, `opcode`, the mask bit and the shortest length form for `length` payload bytes
    (the 4-byte masking key, when `masked`, follows it)."""
    first = 0x80 | opcode
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((first, bit | length))
    if length < 65536:
        return struct.pack("!BBH", first, bit | 126, length)
    return struct.pack("!BBQ", first, bit | 127, length)
