"""A fixed reference workload, timed before and after each level: how fast the machine was.

Shared virtual machines drift: on this project's 2-core machines the same microbenchmark has
been measured 50 % slower an hour apart (noisy neighbours, not our code). CPU seconds per
call-minute from two runs are only comparable when their reference times are close; the
report shows both so a reader can tell a regression from a slow afternoon. The workload is
what the bridge does per caller frame, in code that never changes with the bridge: JSON
parse, base64 decode, a small float64 matrix product.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from bridge.bench.audio import median_us

__all__ = ["reference_us"]

_MESSAGE = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "42",
        "streamSid": "MZ" + "0" * 32,
        "media": {
            "track": "inbound",
            "chunk": "41",
            "timestamp": "820",
            "payload": base64.b64encode(bytes(range(160))).decode(),
        },
    }
)
_A = np.linspace(-1.0, 1.0, 3 * 67).reshape(3, 67)
_B = np.linspace(-1.0, 1.0, 67 * 160).reshape(67, 160)


def _once() -> None:
    data = json.loads(_MESSAGE)
    base64.b64decode(data["media"]["payload"])
    np.dot(_A, _B)


def reference_us(rounds: int = 2000) -> float:
    """Median microseconds of one reference step (about 20 ms in all)."""
    return median_us(lambda i: _once(), rounds, 50)
