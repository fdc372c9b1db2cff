"""Minimal RFC 6455 for the load generator: handshakes and a streaming frame reader.

Sans-I/O. The generator talks only to known peers on loopback, so this handles what they send
(text and binary messages, fragmented or not, ping, pong, close) and nothing more: no extensions,
no UTF-8 validation. It exists because `websockets`' asyncio connection costs the generator
several times more CPU per message than the bridge it is supposed to measure. Frames are encoded
by `bridge.fastws.frames` (clients mask with its `ZERO_KEY`).
"""

from __future__ import annotations

import base64
import hashlib
import os

from bridge.fastws.frames import OP_CLOSE, OP_CONT, ZERO_KEY, apply_mask

__all__ = [
    "FrameReader",
    "HandshakeError",
    "accept_key",
    "client_request",
    "parse_head",
    "server_response",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024


class HandshakeError(Exception):
    """The peer's opening handshake is not a WebSocket upgrade we can accept."""


class FrameReader:
    """Bytes in, whole messages out: `(opcode, payload)`, fragments joined, masks removed."""

    __slots__ = ("_buf", "_fragments", "_opcode")

    def __init__(self) -> None:
        self._buf = b""
        self._fragments: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            key = b""
            if b1 & 0x80:
                key = buf[pos + head : pos + head + 4]
                head += 4
            if end - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            if key and key != ZERO_KEY:
                payload = apply_mask(payload, key)
            opcode = b0 & 0x0F
            # Control frames are never fragmented; a final non-continuation frame is whole.
            if opcode >= OP_CLOSE or (b0 & 0x80 and opcode != OP_CONT and not self._fragments):
                out.append((opcode, payload))
            else:
                if opcode != OP_CONT:
                    self._opcode = opcode
                self._fragments.append(payload)
                if b0 & 0x80:
                    out.append((self._opcode, b"".join(self._fragments)))
                    self._fragments.clear()
        self._buf = buf[pos:] if pos < end else b""
        return out


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def client_request(host: str, target: str, headers: dict[str, str]) -> tuple[bytes, str]:
    """The opening request (bytes) and the accept value the server must answer with."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), accept_key(key)


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP head (up to the blank line) -> (start line, lower-cased headers)."""
    text = head.decode("latin-1")
    start, *rest = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return start, headers


def server_response(head: bytes) -> tuple[bytes, str]:
    """Answer a client's opening request: the 101 response and the request target."""
    start, headers = parse_head(head)
    method, _, rest = start.partition(" ")
    target = rest.rpartition(" ")[0]
    if method != "GET" or headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"not a WebSocket upgrade: {start!r:.80}")
    key = headers.get("sec-websocket-key")
    if not key:
        raise HandshakeError("missing Sec-WebSocket-Key")
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    )
    return response.encode("latin-1"), target
