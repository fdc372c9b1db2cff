"""Estimated cost of a call from its token usage and a price table (`config/prices.toml`).

Only the Realtime tokens reported in `response.done` are priced; input transcription and the
speech fallback are billed separately by OpenAI and are not in the estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from bridge.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("config/prices.toml")
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # snapshot suffix: gpt-realtime-2025-08-28
KINDS = (
    "text_input",
    "cached_text_input",
    "audio_input",
    "cached_audio_input",
    "text_output",
    "audio_output",
)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per one million tokens of each kind."""

    text_input: float
    cached_text_input: float
    audio_input: float
    cached_audio_input: float
    text_output: float
    audio_output: float

    def cost(self, usage: Mapping[str, int]) -> float:
        """Usage as flattened by `CallRecord.add_usage` -> USD.

        The flattened usage keeps the cached total but not its text/audio split, so cached
        tokens are attributed to text and audio in proportion to their input counts.
        """
        text_in = usage.get("input_token_details.text_tokens")
        audio_in = usage.get("input_token_details.audio_tokens", 0)
        if text_in is None:  # no breakdown at all: price everything as text
            text_in, audio_in = usage.get("input_tokens", 0), 0
        cached = min(usage.get("input_token_details.cached_tokens", 0), text_in + audio_in)
        total_in = text_in + audio_in
        cached_text = cached * text_in / total_in if total_in else 0.0
        cached_audio = cached - cached_text
        text_out = usage.get("output_token_details.text_tokens")
        audio_out = usage.get("output_token_details.audio_tokens", 0)
        if text_out is None:
            text_out, audio_out = usage.get("output_tokens", 0), 0
        dollars = (
            (text_in - cached_text) * self.text_input
            + cached_text * self.cached_text_input
            + (audio_in - cached_audio) * self.audio_input
            + cached_audio * self.cached_audio_input
            + text_out * self.text_output
            + audio_out * self.audio_output
        )
        return round(dollars / 1_000_000, 6)


class PriceTable:
    """Model name -> price; a dated snapshot falls back to its undated model."""

    def __init__(self, models: Mapping[str, ModelPrice]) -> None:
        self.models = dict(models)
        self._warned: set[str] = set()

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read the table; a missing default file gives an empty table (no cost estimates)."""
        target = path if path is not None else DEFAULT_PATH
        if not target.exists():
            if path is not None:
                raise ConfigError([f"price table {target}: no such file"])
            logger.warning("no price table at %s: calls get no cost estimate", target)
            return cls({})
        try:
            data = tomllib.loads(target.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"price table {target}: {exc}"]) from None
        return cls.parse(data, str(target))

    @classmethod
    def parse(cls, data: Mapping[str, object], source: str = "prices") -> PriceTable:
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ConfigError([f"{source}: [models] must be a table"])
        problems: list[str] = []
        prices: dict[str, ModelPrice] = {}
        for name, entry in models.items():
            if not isinstance(entry, dict):
                problems.append(f"{source}: models.{name} must be a table")
                continue
            values: dict[str, float] = {}
            for kind in KINDS:
                value = entry.get(kind)
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    problems.append(f"{source}: models.{name}.{kind} must be a number >= 0")
                else:
                    values[kind] = float(value)
            unknown = set(entry) - set(KINDS)
            if unknown:
                problems.append(f"{source}: models.{name}: unknown keys {sorted(unknown)}")
            if len(values) == len(KINDS):
                prices[name] = ModelPrice(**values)
        if problems:
            raise ConfigError(problems)
        return cls(prices)

    def price_for(self, model: str) -> ModelPrice | None:
        price = self.models.get(model) or self.models.get(_DATED.sub("", model))
        if price is None and model and model not in self._warned:
            self._warned.add(model)
            logger.warning("no price for model %r: its calls get no cost estimate", model)
        return price

    def cost(self, model: str, usage: Mapping[str, int]) -> float | None:
        """Estimated USD, or None when the model has no price (or nothing was used)."""
        price = self.price_for(model)
        return price.cost(usage) if price is not None else None
