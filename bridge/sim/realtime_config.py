"""Realtime simulator settings, and the GA session object: defaults, validation, `session.update`.

Pure functions over plain dicts, so the session rules are testable without sockets.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "AUDIO_FORMATS",
    "ClientError",
    "Mode",
    "SimConfig",
    "apply_session_update",
    "default_session",
    "default_turn_detection",
    "missing",
    "require",
    "validate_audio_format",
    "validate_output_modalities",
]

_T = TypeVar("_T")

#: Session keys the GA interface accepts in `session.update` (SDK `RealtimeSessionCreateRequest`).
GA_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "parallel_tool_calls",
        "reasoning",
        # Echoed back by clients that copy `session.created`; the server ignores them.
        "id",
        "object",
        "expires_at",
    }
)
AUDIO_FORMATS = frozenset({"audio/pcm", "audio/pcmu", "audio/pcma"})
TURN_DETECTION_TYPES = frozenset({"server_vad", "semantic_vad"})


class Mode(enum.StrEnum):
    """How the simulated model misbehaves (or not)."""

    NORMAL = "normal"
    ALWAYS_TEXT = "always-text"  # every response is text only (output_text), never audio
    # First response is text only; responses stay text only while the conversation holds an
    # assistant item with only text content; deleting those items brings audio back.
    STICKY_TEXT = "sticky-text"
    DROP_MID_RESPONSE = (
        "drop-mid-response"  # abort TCP after a few deltas of a session's 1st response
    )
    REJECT_CONNECT = "reject-connect"  # refuse the WebSocket handshake (HTTP 403)
    ERROR_ON_CONNECT = "error-on-connect"  # accept, send `error` (invalid_api_key), close 1008


@dataclasses.dataclass
class SimConfig:
    """Behaviour of a `RealtimeSimulator`; read live, so it may be changed between calls."""

    mode: Mode = Mode.NORMAL
    replies: Sequence[str] = (
        "Hello! I am doing great, thanks for asking. How can I help you today?",
    )  # cycled per session
    # If set: turn index (0-based response count of the session) -> 24 kHz float audio to speak.
    reply_audio: Callable[[int], np.ndarray] | None = None
    # If > 0: reply_audio repeats after this many turns, so each is encoded once and shared.
    reply_turns: int = 0
    chunk_ms: int = 100  # audio per output_audio.delta
    speedup: float = 5.0  # deltas are sent this many times faster than real time
    late_deltas_after_cancel: int = 0  # deltas of the old item still sent after a cancel
    caller_transcripts: Sequence[str] = ("Hi Tyler, how's it going?",)  # cycled per commit
    vad_threshold_dbfs: float = -40.0  # energy VAD, used instead of the session's 0..1 threshold
    first_response_latency_ms: int = 0  # delay before the first delta of every response
    # Keep input audio (`input_audio`, `input_ulaw`, append payloads); benchmarks turn it off.
    record_input: bool = True
    drop_after_deltas: int = 3  # DROP_MID_RESPONSE: audio deltas sent before the abort


class ClientError(Exception):
    """A client event the server refuses; becomes an `error` event and the session carries on."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


def missing(param: str) -> ClientError:
    """The error for a required parameter that is absent."""
    return ClientError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def require(event: dict[str, Any], name: str, kind: type[_T]) -> _T:
    """`event[name]` if present and of type `kind` (a bool is not an integer here)."""
    if name not in event:
        raise missing(name)
    value = event[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientError(
            f"Invalid type for '{name}': expected {'integer' if kind is int else kind.__name__}.",
            code="invalid_type",
            param=name,
        )
    return value


def default_turn_detection(kind: str = "server_vad") -> dict[str, Any]:
    """The server's defaults for a turn detection of type `kind`."""
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_session(model: str) -> dict[str, Any]:
    """The GA session object a new connection starts with (as in `session.created`)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": f"sess_{secrets.token_hex(10)}",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": default_turn_detection(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
    }


def validate_output_modalities(value: Any, param: str) -> list[str]:
    """`["audio"]` or `["text"]`; GA refuses both together."""
    if not isinstance(value, list) or not value or any(v not in ("text", "audio") for v in value):
        raise ClientError(
            f"Invalid value for '{param}': expected ['audio'] or ['text'].", param=param
        )
    if len(set(value)) > 1:
        raise ClientError(
            f"Invalid modalities: {value}. Supported combinations are: ['text'] and ['audio'].",
            param=param,
        )
    return [value[0]]


def validate_audio_format(value: Any, param: str) -> dict[str, Any]:
    """A GA audio format object, normalized (`audio/pcm` gets its only rate, 24000)."""
    if not isinstance(value, dict) or value.get("type") not in AUDIO_FORMATS:
        kind = value.get("type") if isinstance(value, dict) else value
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', 'audio/pcmu' and "
            "'audio/pcma'.",
            param=f"{param}.type",
        )
    if value["type"] == "audio/pcm":
        rate = value.get("rate", 24000)
        if rate != 24000:
            raise ClientError(
                f"Invalid value: {rate}. Supported values are: 24000.", param=f"{param}.rate"
            )
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": value["type"]}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `base` in place: dicts recurse, anything else (lists, null) replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _require_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError(f"Invalid type for '{param}': expected an object.", param=param)
    return value


def apply_session_update(
    current: dict[str, Any], update: Any, *, audio_produced: bool
) -> dict[str, Any]:
    """Return the session after `session.update`, or raise `ClientError` (nothing applied).

    Beta-shaped keys (`modalities`, `input_audio_format`, top-level `voice`, ...) are unknown
    parameters in GA, as is a missing `session.type`.
    """
    update = _require_dict(update, "session")
    for key in update:
        if key not in GA_SESSION_KEYS:
            raise ClientError(
                f"Unknown parameter: 'session.{key}'.",
                code="unknown_parameter",
                param=f"session.{key}",
            )
    if "type" not in update:
        raise ClientError(
            "Missing required parameter: 'session.type'.",
            code="missing_required_parameter",
            param="session.type",
        )
    if update["type"] != "realtime":
        raise ClientError(
            f"Invalid value: '{update['type']}'. The simulator supports only 'realtime'.",
            param="session.type",
        )
    new = copy.deepcopy(current)
    clean = {k: v for k, v in update.items() if k not in ("id", "object", "expires_at")}
    if "output_modalities" in clean:
        clean["output_modalities"] = validate_output_modalities(
            clean["output_modalities"], "session.output_modalities"
        )
    audio = _require_dict(clean.pop("audio", {}), "session.audio")
    _deep_merge(new, clean)
    for direction in ("input", "output"):
        part = _require_dict(audio.get(direction, {}), f"session.audio.{direction}")
        target = new["audio"][direction]
        part = dict(part)
        if "format" in part:
            # A format object replaces the old one: no `rate` left over on audio/pcmu.
            target["format"] = validate_audio_format(
                part.pop("format"), f"session.audio.{direction}.format"
            )
        if direction == "input" and "turn_detection" in part:
            target["turn_detection"] = _merge_turn_detection(
                target.get("turn_detection"), part.pop("turn_detection")
            )
        voice_change = "voice" in part and part["voice"] != target.get("voice")
        if direction == "output" and voice_change and audio_produced:
            raise ClientError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        _deep_merge(target, part)
    return new


def _merge_turn_detection(old: Any, value: Any) -> dict[str, Any] | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    value = _require_dict(value, param)
    kind = value.get("type", old.get("type") if isinstance(old, dict) else "server_vad")
    if kind not in TURN_DETECTION_TYPES:
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
            param=f"{param}.type",
        )
    base = (
        copy.deepcopy(old)
        if isinstance(old, dict) and old.get("type") == kind
        else default_turn_detection(kind)
    )
    _deep_merge(base, value)
    return base
