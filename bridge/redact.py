"""Redaction: phone numbers, card numbers and e-mail addresses taken out of what the call log keeps.

A profile's `redact = ["phone", "card", "email"]` (any subset) names what goes. `redact` replaces
each match with `[phone]`, `[card]` or `[email]` in transcripts, event text and tool arguments
and results before they are stored, streamed live, shown or sent to a webhook; it is applied
where a record becomes rows (`bridge/store/rows.py`), the one door out of a live call.

A card number is 13 to 19 digits (spaces or dashes between groups allowed) that pass the Luhn
check, so an order or tracking number of the same length survives. A phone number is a `+` and
7 to 15 digits, or 10 or 11 digits written as a phone number is (`(555) 010-0100`,
`555.010.0100`, `07700 900123`); shorter digit runs (order numbers, amounts, times) are left.
A transcript still growing (`partial=True`) also hides a trailing digit run or address that
may be the start of one, so the live feed never shows half a card number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

REDACT_KINDS = ("phone", "card", "email")

_CARD = re.compile(r"(?<![\d+])\d(?:[ -]?\d){12,18}(?!\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d(?:[ .\-]?\(?\d\)?){6,14}"  # international: + and 7 to 15 digits
    r"|\(?\d{3}\)?[ .\-]?\d{3}[ .\-]?\d{4}"  # 555 010 0100, (555) 010-0100, 5550100100
    r"|1[ .\-]?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]?\d{4}"  # 1 555 010 0100
    r"|0\d{2,4}[ .\-]?\d{3,4}[ .\-]?\d{3,4}"  # national with a trunk 0: 07700 900123
    r")(?![\w])"
)
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b"  # written
    r"|\b[A-Za-z0-9._\-]+\s+at\s+[A-Za-z0-9\-]+(?:\s+dot\s+[A-Za-z0-9\-]+)*"  # as spoken
    r"\s+dot\s+[A-Za-z]{2,24}\b",
    re.IGNORECASE,
)
# The tail of a growing transcript that may become a match: digits with separators, or an
# address whose domain has not arrived yet.
_PARTIAL_TAIL = re.compile(r"(?:\+?\d[\d .\-()]*|[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]*)$")
MIN_PARTIAL_DIGITS = 4  # shorter tails ("at 3", "order 42") are shown as they come


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[card]" if luhn_valid(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    return "[phone]"


def _email(match: re.Match[str]) -> str:
    return "[email]"


_RULES: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = {
    # Cards before phones: a card's groups must not be taken for a phone number first.
    "card": (_CARD, _card),
    "phone": (_PHONE, _phone),
    "email": (_EMAIL, _email),
}


def redact(text: str, kinds: Iterable[str], *, partial: bool = False) -> str:
    """`text` with every match of `kinds` replaced; `partial`: the text is still growing."""
    if not text:
        return text
    chosen = [kind for kind in _RULES if kind in kinds]
    if not chosen:
        return text
    for kind in chosen:
        pattern, replace = _RULES[kind]
        text = pattern.sub(replace, text)
    if partial:
        tail = _PARTIAL_TAIL.search(text)
        if tail is not None and _may_grow_into_match(tail.group(), chosen):
            text = text[: tail.start()] + "[...]"
    return text


def _may_grow_into_match(tail: str, kinds: list[str]) -> bool:
    if "@" in tail:
        return "email" in kinds
    digits = sum(char.isdigit() for char in tail)
    return digits >= MIN_PARTIAL_DIGITS and ("card" in kinds or "phone" in kinds)


def redact_json(value: object, kinds: Iterable[str]) -> object:
    """Every string in a JSON-like value (tool arguments and results) redacted."""
    kinds = tuple(kinds)
    if isinstance(value, str):
        return redact(value, kinds)
    if isinstance(value, dict):
        return {key: redact_json(item, kinds) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_json(item, kinds) for item in value]
    return value


__all__ = ["REDACT_KINDS", "luhn_valid", "redact", "redact_json"]
