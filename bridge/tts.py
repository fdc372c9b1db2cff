"""Text-to-speech fallback: when the model answers in text twice, speak the text ourselves.

OpenAI's speech endpoint (`POST /v1/audio/speech`, `response_format: pcm`) returns 24 kHz PCM16.
"""

from __future__ import annotations

import httpx

from bridge.errors import UpstreamUnavailable
from bridge.settings import Settings
from bridge.upstream import auth_headers

MAX_INPUT_CHARS = 4096


class SpeechClient:
    """One pooled HTTP client for the whole process; `synthesize` is safe to call concurrently."""

    def __init__(self, settings: Settings, *, timeout: float = 15.0) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(timeout=timeout, headers=auth_headers(settings))

    async def synthesize(self, text: str, voice: str) -> bytes:
        """Return PCM16LE 24 kHz mono for `text`; raise UpstreamUnavailable on any failure."""
        body = {
            "model": self._settings.tts_model,
            "input": text[:MAX_INPUT_CHARS],
            "voice": voice,
            "response_format": "pcm",
        }
        try:
            response = await self._client.post(self._settings.speech_url, json=body)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"speech endpoint unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise UpstreamUnavailable(f"speech endpoint answered HTTP {response.status_code}")
        audio = response.content
        return audio[: len(audio) - len(audio) % 2]

    async def aclose(self) -> None:
        await self._client.aclose()
