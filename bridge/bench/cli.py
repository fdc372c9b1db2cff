"""`bridge bench ...`: dispatch to the benchmark asked for."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["audio"]:
        from bridge.bench import audio

        return audio.main()
    print("usage: bridge bench audio", file=sys.stderr)
    return 2
