"""What shapes one call: the assistant's persona, voice, greeting, turn-taking and audio mode.

A profile is fixed when the call starts; reloading configuration never changes a live call.
"""

from __future__ import annotations

import dataclasses

from bridge.settings import AudioMode, Settings


@dataclasses.dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server VAD tuning sent to the Realtime session."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """One assistant configuration, chosen by the called number."""

    name: str
    instructions: str
    voice: str
    model: str
    greeting: str = ""
    turn_detection: TurnDetection = TurnDetection()
    transcription_model: str = "gpt-4o-mini-transcribe"
    audio_mode: AudioMode = AudioMode.TRANSCODE
    max_call_seconds: float = 3600.0
    keep_transcripts: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "default") -> Profile:
        """The built-in profile: everything comes from the environment."""
        return cls(
            name=name,
            instructions=settings.instructions,
            voice=settings.voice,
            model=settings.model,
            greeting=settings.greeting,
            turn_detection=TurnDetection(
                threshold=settings.vad_threshold,
                prefix_padding_ms=settings.vad_prefix_padding_ms,
                silence_duration_ms=settings.vad_silence_ms,
            ),
            transcription_model=settings.transcription_model,
            audio_mode=settings.audio_mode,
            max_call_seconds=settings.max_call_seconds,
        )
