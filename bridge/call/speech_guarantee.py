"""Spoken replies are a guarantee: detect a reply that came back as text only, and recover.

Sans-I/O. The ladder per reply: (1) delete the text-only item, so the model does not copy it,
and ask again for audio with the same words; (2) if that is text-only too, speak the text with
the speech endpoint. After repeated fallbacks the call skips straight to (2); after repeated
failures of (2) it gives up rather than hold a silent line open.
"""

from __future__ import annotations

import dataclasses
import enum

from bridge.realtime import ResponseDone


class Recovery(enum.StrEnum):
    REASK = "reask"
    TTS = "tts"
    GIVE_UP = "give_up"


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    recovery: Recovery
    text: str
    delete_items: tuple[str, ...]


class SpeechGuarantee:
    """Decides, per finished response, whether and how the caller must still hear it."""

    def __init__(self, *, direct_tts_after: int = 2, give_up_after: int = 3) -> None:
        self._direct_tts_after = direct_tts_after
        self._give_up_after = give_up_after
        self._awaiting_reask = False
        self._fallbacks_in_a_row = 0
        self._failures_in_a_row = 0

    @property
    def awaiting_reask(self) -> bool:
        """True between sending a re-ask and seeing its response finish."""
        return self._awaiting_reask

    def reask_sent(self) -> None:
        self._awaiting_reask = True

    def response_done(self, done: ResponseDone, *, audio_seen: bool) -> Action | None:
        """`audio_seen`: audio deltas of this response reached us (some servers omit content)."""
        if done.status not in ("completed", "incomplete"):
            # Cancelled or failed: there is no reply to guarantee. A failed re-ask falls to TTS.
            if self._awaiting_reask and done.status == "failed":
                self._awaiting_reask = False
            return None
        messages = [item for item in done.output if item.type in ("message", "")]
        if audio_seen or any(item.has_audio for item in messages):
            self._awaiting_reask = False
            self._fallbacks_in_a_row = 0
            return None
        text_items = [item for item in messages if item.text.strip()]
        if not text_items:
            return None  # a tool call or an empty reply: nothing was meant to be heard
        text = " ".join(item.text.strip() for item in text_items)
        ids = tuple(item.item_id for item in text_items)
        if self._failures_in_a_row >= self._give_up_after:
            return Action(Recovery.GIVE_UP, text, ())
        if self._awaiting_reask or self._fallbacks_in_a_row >= self._direct_tts_after:
            self._awaiting_reask = False
            self._fallbacks_in_a_row += 1
            # Keep this item: the caller is about to hear exactly these words.
            return Action(Recovery.TTS, text, ())
        return Action(Recovery.REASK, text, ids)

    def tts_played(self) -> None:
        self._failures_in_a_row = 0

    def tts_failed(self) -> None:
        self._failures_in_a_row += 1
