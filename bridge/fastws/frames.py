"""RFC 6455 frame codec shared by the bridge's socket shortcuts and the benchmark's generator:
the header of a final frame, masking, whole final frames (any opcode, masked or not), a close
payload, and decoding a read that holds nothing but small final masked text frames. Everything
else about WebSockets is the library's (the generator's streaming reader is `bridge.bench.wire`)."""

from __future__ import annotations

import struct
from collections.abc import Callable

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - the wheels ship the C extension
    _c_apply_mask = None

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ZERO_KEY",
    "apply_mask",
    "close_payload",
    "final_frame_header",
    "frame",
    "simple_text_frames",
    "text_frame",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_KEY = b"\x00\x00\x00\x00"
"""A masking key that leaves the payload as it is (see `frame`)."""


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


def frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame carrying `payload`: unmasked (server to client) without `mask`, else
    masked with that 4-byte key. RFC 6455 §5.3 wants an unpredictable key so that hostile scripts
    cannot steer what proxies see; a peer that talks only to known servers on loopback (the
    benchmark's generator) may pass `ZERO_KEY`, which skips the masking pass on this side while
    the server still runs its full unmasking pass."""
    if mask is None:
        return final_frame_header(opcode, len(payload), masked=False) + payload
    body = payload if mask == ZERO_KEY else apply_mask(payload, mask)
    return final_frame_header(opcode, len(payload), masked=True) + mask + body


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the status code, then at most 120 bytes of reason."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:120]


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
