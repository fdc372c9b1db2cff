"""`RecentKeys`: a set that remembers only its newest keys (a call's cut items, its tool call
ids): what a late event may still name, without growing for the whole call."""

from __future__ import annotations


class RecentKeys(dict[str, None]):
    """Insertion-ordered keys, at most `keep` of them; `in` is a plain dict lookup (it runs for
    every audio delta)."""

    __slots__ = ("keep",)

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def add(self, key: str) -> None:
        self[key] = None
        if len(self) > self.keep:
            del self[next(iter(self))]
