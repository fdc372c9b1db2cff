"""How much of an interrupted reply the caller heard, in words (an estimate).

The model truncates its own transcript of an interrupted item, so the bridge keeps the full
text it received plus `heard_ms` of `audio_ms`; the text is split by that share, at a word
boundary. Speech is not evenly paced, hence "estimated" wherever this is shown.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class HeardSplit:
    heard: str
    unheard: str
    share: float  # heard_ms / audio_ms, 0..1
    estimated: bool  # True when the split comes from the share, not from playback


def split_heard(text: str, heard_ms: float | None, audio_ms: float) -> HeardSplit:
    """Split `text` into what the caller heard and what they never heard."""
    if heard_ms is None or audio_ms <= 0:
        return HeardSplit(text, "", 1.0, estimated=False)
    share = min(1.0, max(0.0, heard_ms / audio_ms))
    cut = _word_boundary(text, round(len(text) * share))
    return HeardSplit(text[:cut].rstrip(), text[cut:].lstrip(), share, estimated=True)


def _word_boundary(text: str, cut: int) -> int:
    """The whitespace position nearest to `cut` (or either end of the text)."""
    if cut <= 0 or not text.strip():
        return 0
    if cut >= len(text):
        return len(text)
    if text[cut].isspace() or text[cut - 1].isspace():
        return cut
    left = max(text.rfind(" ", 0, cut), text.rfind("\n", 0, cut))
    right_space = [i for i in (text.find(" ", cut), text.find("\n", cut)) if i != -1]
    right = min(right_space) if right_space else len(text)
    if left == -1:
        return right if right - cut < cut else 0
    return left if cut - left <= right - cut else right
