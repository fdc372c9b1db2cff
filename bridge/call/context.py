"""The conversation so far, as instructions for a model session that takes over a call.

A new session (after a dropped connection, or past the session cap) starts empty. It is told
what was said in its instructions, never given earlier assistant turns as assistant text items:
a conversation holding assistant text teaches the model to answer in text only, the failure
this bridge exists to prevent. Bounded: the most recent turns that fit `MAX_CHARS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.record import Turn

MAX_CHARS = 6000
MAX_TURN_CHARS = 600


def conversation_so_far(turns: Sequence[Turn], max_chars: int = MAX_CHARS) -> str:
    """`Caller: ...` / `You: ...` lines, oldest first, most recent ones kept."""
    lines: list[str] = []
    used = 0
    for turn in reversed(turns):
        text = " ".join(turn.text.split())
        if not text:
            continue
        if len(text) > MAX_TURN_CHARS:
            text = text[:MAX_TURN_CHARS] + "..."
        who = "Caller" if turn.role == "caller" else "You"
        if turn.role != "caller" and turn.interrupted:
            text += " [cut off here]"
        line = f"{who}: {text}"
        if used + len(line) > max_chars:
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(reversed(lines))


def resumed_instructions(base: str, turns: Sequence[Turn]) -> str:
    """The profile's instructions, plus the call so far, for a session that takes over."""
    history = conversation_so_far(turns)
    if not history:
        return base
    return (
        f"{base}\n\nThis phone call is already under way: you are taking it over after a "
        "technical interruption the caller may have noticed. What was said so far, most recent "
        f"last:\n{history}\n\nCarry on from there, speaking aloud as before. Do not greet the "
        "caller again and do not repeat what you already said."
    )


def continue_instructions(base: str, cut_off: str) -> str:
    """A reply the interruption cut off: finish the thought, without starting over."""
    return (
        f'{base}\n\nThe line dropped while you were saying: "{cut_off}". In one or two '
        "short sentences, finish what you were saying, without repeating the part above."
    )
