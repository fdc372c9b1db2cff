"""RFC 6455 frame codec shared by the bridge's socket shortcuts and the benchmark's generator:
the header of a final frame, masking, a whole masked text frame, and decoding a read that holds
nothing but small final masked text frames. Everything else about WebSockets is the library's."""

from __future__ import annotations

import struct
from collections.abc import Callable

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - the wheels ship the C extension
    _c_apply_mask = None

__all__ = ["OP_TEXT", "apply_mask", "final_frame_header", "simple_text_frames", "text_frame"]

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


def text_frame(payload: bytes, mask: bytes) -> bytes:
    """One final, masked text frame (client to server) carrying `payload`."""
    return final_frame_header(OP_TEXT, len(payload), masked=True) + mask + apply_mask(payload, mask)


def simple_text_frames(data: bytes, max_size: int | None) -> list[str] | None:
    """The messages in `data` if it is nothing but whole, final, masked text frames with UTF-8
    payloads of at most `max_size` bytes (and under 64 KiB); else None."""
    texts: list[str] = []
    i, n = 0, len(data)
    while i < n:
        if n - i < 6 or data[i] != 0x81 or not data[i + 1] & 0x80:  # FIN + text, masked
            return None
        length, start = data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, start = int.from_bytes(data[start : start + 2]), start + 2
        elif length == 127:
            return None
        end = start + 4 + length
        if end > n or (max_size is not None and length > max_size):
            return None
        try:
            texts.append(apply_mask(data[start + 4 : end], data[start : start + 4]).decode())
        except UnicodeDecodeError:
            return None
        i = end
    return texts
